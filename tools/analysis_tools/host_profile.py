"""What the host does in one training step, counted on the CPU (a proxy for a GPU step).

A GPU step is bound by the host when Python, kernel launches and device-to-host
synchronisations take longer than the kernels. None of these need a GPU to be counted:
every ATen op a step dispatches is a kernel launch (or more) on a GPU, and some ops make
the host wait for the device whatever the device:

- ``_local_scalar_dense``: ``.item()``, ``bool()``, ``int()``, ``float()`` of a tensor;
- ops whose output shape depends on the data (``nonzero``, ``masked_select``, ``unique``,
  boolean-mask indexing, ``repeat_interleave`` with tensor repeats);
- ``lift_fresh``: a tensor made from host data (``torch.tensor``, ``new_tensor``): on a GPU a
  copy from pageable host memory, which synchronises.

:func:`profile_step` runs ``train_step``'s phases as mmengine runs them (data
preprocessor, forward and loss, ``parse_losses``, backward, gradient clipping and the
optimizer step, the config's runtime-info and NaN-guard hooks, and the copy of held log
values a deferring hook makes once per log interval) under a dispatch mode that counts per
phase. Views (``func.is_view``) are counted apart: they launch nothing on a GPU. The copies
the CPU cannot see are counted from outside, by wrapping for the step (a context manager
patching module globals and class attributes, restored after) the functions that make
them: ``models/host_data.py``'s (pinned host-to-device copies, device-to-host copies) and,
for mmengine's route, the data preprocessor's ``cast_data`` (the ground truth's pageable
copies). The CPU differs from a GPU where the code picks another path by device; the
profile follows the GPU's:

- the optimizer: ``foreach=True`` where it is not fused (the CPU default is one update per
  tensor);
- deformable attention's sampling and the focal loss: one Triton / mmcv kernel a call on a
  GPU, their PyTorch formulas here: each call counts as one op forward and one backward
  (the formula runs uncounted; ``gpu_kernels=False`` counts the formulas instead).

The "mmdet step" column is :func:`.step_equality.stock_mmdet` of the same config.

Each synchronisation is also listed with the line of code that asked for it
(``sync_sites``).
"""
from __future__ import annotations

import collections
import contextlib
import sys
import time
from types import SimpleNamespace
from typing import Dict, Optional, Tuple
from unittest import mock

import torch
from torch.utils._python_dispatch import TorchDispatchMode

SYNC_OPS = {
    'aten._local_scalar_dense': 'item/bool/int/float of a tensor',
    'aten.nonzero': 'data-dependent shape', 'aten.masked_select': 'data-dependent shape',
    'aten.unique': 'data-dependent shape', 'aten._unique': 'data-dependent shape',
    'aten._unique2': 'data-dependent shape', 'aten.unique_dim': 'data-dependent shape',
    'aten.unique_consecutive': 'data-dependent shape',
    'aten.repeat_interleave': 'data-dependent shape',
    'aten.lift_fresh': 'tensor from host data',
}
PHASES = ('forward', 'backward', 'optimizer', 'logging', 'log flush')


class StepCounter(TorchDispatchMode):
    """ATen ops and views by phase; synchronising ops by phase and kind, and the line of
    code (outside torch) that asked for each."""

    def __init__(self) -> None:
        super().__init__()
        self.phase = 'forward'
        self.ops = collections.Counter()
        self.views = collections.Counter()  # ops that only make a view: no kernel on a GPU
        self.syncs = collections.Counter()
        self.sync_sites = collections.Counter()
        self.op_seconds = 0.0
        self.paused = 0
        self.pinned_copies = collections.Counter()
        self.expect_pinned = 0
        self.kernel_calls = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if self.paused:
            return func(*args, **(kwargs or {}))
        name = str(func.overloadpacket) if hasattr(func, 'overloadpacket') else str(func)
        name = name if name.startswith('aten.') else f'aten.{name}'
        self.ops[self.phase] += 1
        if getattr(func, 'is_view', False):
            self.views[self.phase] += 1
        kind = name if name in SYNC_OPS else None
        if name == 'aten.lift_fresh' and self.expect_pinned:
            # the host data of a pinned, non-blocking copy (models/host_data.py)
            self.expect_pinned -= 1
            kind = None
        elif name == 'aten.repeat_interleave' and not _tensor_repeats(args, kwargs):
            kind = None
        elif name == 'aten.index' and _bool_index(args):
            kind = 'aten.index (boolean mask)'
        if kind is not None:
            self.record_sync(kind, _caller())
        start = time.perf_counter()
        out = func(*args, **(kwargs or {}))
        self.op_seconds += time.perf_counter() - start
        return out

    def record_sync(self, kind: str, site: str) -> None:
        self.syncs[(self.phase, kind)] += 1
        self.sync_sites[(self.phase, kind, site)] += 1

    @contextlib.contextmanager
    def pause(self):
        self.paused += 1
        try:
            yield
        finally:
            self.paused -= 1

    def count_kernel(self, name: str) -> None:
        """One op standing for a GPU kernel launch (see :func:`_kernel_standins`)."""
        self.ops[self.phase] += 1
        self.kernel_calls[(self.phase, name)] += 1


def _caller() -> str:
    """The innermost frame outside torch: the code that asked for the op."""
    import sys
    frame = sys._getframe(2)
    while frame is not None:
        path = frame.f_code.co_filename
        ours = 'host_profile' in path or 'host_data' in path
        if ('/torch/' not in path and not ours) or '/torch/optim' in path:
            parts = path.split('/')
            return f'{"/".join(parts[-2:])}:{frame.f_lineno} {frame.f_code.co_name}'
        frame = frame.f_back
    return '?'


def _tensor_repeats(args, kwargs) -> bool:
    repeats = (kwargs or {}).get('repeats', args[1] if len(args) > 1 else None)
    return torch.is_tensor(repeats) and repeats.numel() > 1


def _bool_index(args) -> bool:
    indices = args[1] if len(args) > 1 else ()
    return any(torch.is_tensor(i) and i.dtype == torch.bool for i in indices or ())


class _KernelStandIn(torch.autograd.Function):
    """Runs ``fn`` uncounted and counts one op forward and one backward: what a GPU
    kernel (Triton deformable attention, mmcv's focal loss) launches for it."""

    @staticmethod
    def forward(ctx, counter, name, fn, *tensors):
        ctx.counter, ctx.name = counter, name
        counter.count_kernel(name)
        with counter.pause(), torch.enable_grad():
            inputs = [t.detach().requires_grad_(t.requires_grad)
                      if torch.is_tensor(t) and t.is_floating_point() else t for t in tensors]
            out = fn(*inputs)
        ctx.inputs, ctx.out = inputs, out
        return out.detach()

    @staticmethod
    def backward(ctx, grad_out):
        ctx.counter.count_kernel(ctx.name)
        wanted = [t for t in ctx.inputs if torch.is_tensor(t) and t.requires_grad]
        with ctx.counter.pause():
            grads = iter(torch.autograd.grad(ctx.out, wanted, grad_out, allow_unused=True)
                         if wanted and ctx.out.requires_grad else [])
        result = [next(grads) if torch.is_tensor(t) and t.requires_grad else None
                  for t in ctx.inputs]
        return (None, None, None, *result)


@contextlib.contextmanager
def _kernel_standins(counter: StepCounter):
    """Deformable attention's sampling (this project's and mmcv's) and the focal loss as
    one counted op each way, as their GPU kernels are (the CPU runs their PyTorch formulas:
    counted apart too). Patched on the classes and mmcv's module while the block runs."""
    import mmcv.ops.multi_scale_deform_attn as mmcv_msda
    from mmdet.models.losses import FocalLoss

    from projects.dino_dinov2.models import DeformableAttention
    sample, msda, focal = (DeformableAttention.sample,
                           mmcv_msda.multi_scale_deformable_attn_pytorch, FocalLoss.forward)

    def sample_standin(self, *args):
        return _KernelStandIn.apply(counter, 'deformable attention',
                                    lambda *t: sample(self, *t), *args)

    def msda_standin(value, spatial_shapes, *args):  # mmcv's, inside its own forward
        return _KernelStandIn.apply(counter, 'deformable attention',
                                    lambda v, *t: msda(v, spatial_shapes, *t), value, *args)

    def focal_standin(self, pred, target, weight=None, avg_factor=None,
                      reduction_override=None):
        def fn(p, t):
            return focal(self, p, t, weight=weight, avg_factor=avg_factor,
                         reduction_override=reduction_override)
        return _KernelStandIn.apply(counter, 'focal loss', fn, pred, target)
    with mock.patch.object(DeformableAttention, 'sample', sample_standin), \
            mock.patch.object(mmcv_msda, 'multi_scale_deformable_attn_pytorch', msda_standin), \
            mock.patch.object(FocalLoss, 'forward', focal_standin):
        yield


@contextlib.contextmanager
def _copies_counted(counter: StepCounter, preprocessor_cls):
    """The host-to-device and device-to-host copies the CPU cannot see, counted: every
    module's ``host_to_device`` / ``to_host`` (``models/host_data.py``) and mmengine's
    ``cast_data`` wrapped while the block runs."""
    from projects.dino_dinov2.models import host_data
    real_h2d, real_d2h = host_data.host_to_device, host_data.to_host

    def host_to_device(values, device):
        counter.pinned_copies[counter.phase] += 1
        if not torch.is_tensor(values):
            counter.expect_pinned += 1  # torch.from_numpy dispatches a lift_fresh
        return real_h2d(values, device)

    def to_host(tensor):
        counter.record_sync('device-to-host copy', _caller())
        return real_d2h(tensor)

    real_cast = preprocessor_cls.cast_data

    def cast_data(self, data):
        # mmengine's route to the device (mmdet's preprocessor): the images come pinned
        # from a pin_memory loader; the data samples' tensors are pageable
        if isinstance(data, dict) and 'inputs' in data:
            counter.pinned_copies[counter.phase] += len(data['inputs'])
            for sample in data.get('data_samples') or []:
                for field in ('gt_instances', 'ignored_instances'):
                    if field in sample:
                        for value in sample.get(field).values():
                            if torch.is_tensor(getattr(value, 'tensor', value)):
                                counter.record_sync('host-to-device copy (pageable)',
                                                    'data_preprocessor.cast_data')
        return real_cast(self, data)
    with contextlib.ExitStack() as stack:
        for module in list(sys.modules.values()):
            names = getattr(module, '__dict__', {})
            if names.get('host_to_device') is real_h2d:
                stack.enter_context(mock.patch.object(module, 'host_to_device',
                                                      host_to_device))
            if names.get('to_host') is real_d2h:
                stack.enter_context(mock.patch.object(module, 'to_host', to_host))
        stack.enter_context(mock.patch.object(preprocessor_cls, 'cast_data', cast_data))
        yield


def _logging_hooks(cfg):
    """The config's runtime-info and NaN-guard hooks (built), and its log interval."""
    from mmengine.hooks import RuntimeInfoHook
    from mmengine.registry import HOOKS
    default_hooks = cfg.get('default_hooks', {})
    runtime = default_hooks.get('runtime_info')
    hooks = [HOOKS.build(dict(runtime)) if runtime else RuntimeInfoHook()]
    if default_hooks.get('nan_guard'):
        hooks.append(HOOKS.build(dict(default_hooks['nan_guard'])))
    interval = int((default_hooks.get('logger') or {}).get('interval', 50))
    for hook in hooks:
        if getattr(hook, 'interval', 0) is None:  # DeferredRuntimeInfoHook: the logger's
            hook.interval = interval
    return hooks, interval


def profile_step(cfg, batch_size: int = 2, image_size: Tuple[int, int] = (256, 320),
                 num_gt: Tuple[int, ...] = (9, 12), steps: int = 1,
                 foreach: bool = True,
                 gpu_kernels: bool = True) -> Dict:
    """Count one training step (the last of ``steps``). The optimizer's state is made
    first (one update with zero gradients), as after the first step of a run.

    Returns ops per phase, synchronising ops per phase and kind, the optimizer's param
    groups and parameters updated, and times (wall, inside ATen ops, the rest: Python).
    """
    from mmengine.logging import MessageHub

    from .benchmark import build_model, num_classes_of, synthetic_batch
    device = torch.device('cpu')
    model, optim_wrapper, _ = build_model(cfg, 'full', device)
    optimizer = optim_wrapper.optimizer
    if foreach:
        for group in optimizer.param_groups:
            if not group.get('fused'):
                group['foreach'] = True
    batches = []
    for i, n in enumerate(num_gt[:batch_size] + (num_gt[-1], ) * (batch_size - len(num_gt))):
        one = synthetic_batch(1, image_size, num_classes_of(cfg), n, seed=i)
        batches.append(one)
    data = dict(inputs=[b['inputs'][0] for b in batches],
                data_samples=[b['data_samples'][0] for b in batches])
    hub = MessageHub.get_current_instance()
    hooks, log_interval = _logging_hooks(cfg)
    # what the runtime-info and NaN-guard hooks read of a Runner
    runner = SimpleNamespace(optim_wrapper=optim_wrapper, iter=0, epoch=0, message_hub=hub,
                             hooks=hooks, max_iters=10 ** 9, train_dataloader=range(10 ** 9),
                             train_loop=None, work_dir='.')
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    for p in trainable:
        p.grad = torch.zeros_like(p)
    optimizer.step()
    optim_wrapper.zero_grad()
    result: Optional[Dict] = None
    for step in range(steps):
        counter = StepCounter()
        start = time.perf_counter()
        with contextlib.ExitStack() as stack:
            if gpu_kernels:
                stack.enter_context(_kernel_standins(counter))
            stack.enter_context(_copies_counted(counter, type(model.data_preprocessor)))
            with counter:
                with optim_wrapper.optim_context(model):
                    batch = model.data_preprocessor(data, True)
                    losses = model._run_forward(batch, mode='loss')
                parsed, log_vars = model.parse_losses(losses)
                counter.phase = 'backward'
                optim_wrapper.backward(parsed)
                counter.phase = 'optimizer'
                optim_wrapper.step()
                optim_wrapper.zero_grad()
                counter.phase = 'logging'
                runner.iter = step
                for hook in hooks:
                    hook.after_train_iter(runner, step, None, outputs=log_vars)
                counter.phase = 'log flush'
                for hook in hooks:
                    if hasattr(hook, 'flush'):
                        hook.flush(runner)
        wall = time.perf_counter() - start
        if step == steps - 1:
            params = sum(len(g['params']) for g in optimizer.param_groups)
            per_step = sum(counter.ops[p] for p in PHASES if p != 'log flush')
            flush_ops = counter.ops['log flush']
            views = sum(counter.views[p] for p in PHASES if p != 'log flush') + \
                counter.views['log flush'] / log_interval
            syncs_out = sum(n for (phase, _), n in counter.syncs.items()
                            if phase not in ('optimizer', 'log flush'))
            flush_syncs = sum(n for (phase, _), n in counter.syncs.items()
                              if phase == 'log flush')
            result = dict(
                ops_per_step=per_step + flush_ops / log_interval,
                views_per_step=views,
                launches_per_step=per_step + flush_ops / log_interval - views,
                syncs_per_step_outside_optimizer=syncs_out + flush_syncs / log_interval,
                ops={p: counter.ops[p] for p in PHASES}, ops_total=sum(counter.ops.values()),
                syncs={f'{phase} {name}': n for (phase, name), n in sorted(
                    counter.syncs.items())},
                syncs_total=sum(counter.syncs.values()),
                syncs_outside_optimizer=syncs_out, flush_syncs=flush_syncs,
                log_interval=log_interval,
                kernel_standins=sum(counter.kernel_calls.values()),
                pinned_copies=sum(counter.pinned_copies.values()),
                gpu_kernels=gpu_kernels,
                param_groups=len(optimizer.param_groups), params_updated=params,
                wall_s=wall, aten_s=counter.op_seconds, python_s=wall - counter.op_seconds,
                loss_keys=len(log_vars), image_size=list(image_size), batch_size=batch_size,
                num_gt=list(num_gt), foreach=foreach)
            result['sync_sites'] = [f'{phase} {kind} at {site}: {n}' for (phase, kind, site), n
                                    in counter.sync_sites.most_common()]
    return result


def table(rows: Dict[str, Dict]) -> str:
    """Markdown: one column per profiled config."""
    names = list(rows)
    lines = ['| per training step | ' + ' | '.join(names) + ' |',
             '| --- |' + ' ---: |' * len(names)]

    def line(label, get):
        lines.append(f'| {label} | ' + ' | '.join(str(get(rows[n])) for n in names) + ' |')

    def num(v):
        return f'{v:,.0f}' if float(v).is_integer() else f'{v:,.2f}'
    line('**ATen ops per step** (a log flush counted 1/interval)',
         lambda r: f'**{num(r["ops_per_step"])}**')
    for phase in PHASES:
        line(f'- {phase}', lambda r, p=phase: num(r['ops'][p]))
    line('- of which views (metadata only: no kernel on a GPU)',
         lambda r: num(r['views_per_step']))
    line('**ATen ops that launch work** (views excluded)',
         lambda r: f'**{num(r["launches_per_step"])}**')
    line('- GPU kernels stood in for (deformable attention, focal loss: 1 op each way)',
         lambda r: r['kernel_standins'] if r['gpu_kernels'] else 'not (CPU formulas)')
    line('**synchronising ops per step, outside the optimizer**',
         lambda r: f'**{num(r["syncs_per_step_outside_optimizer"])}**')
    kinds = sorted({k for r in rows.values() for k in r['syncs']})
    for kind in kinds:
        line(f'- {kind}', lambda r, k=kind: r['syncs'].get(k, 0))
    line('host-to-device copies, pinned and non-blocking (no sync)',
         lambda r: r['pinned_copies'])
    line('**optimizer param groups**', lambda r: f'**{r["param_groups"]}**')
    line('parameters updated', lambda r: r['params_updated'])
    line('logged values', lambda r: r['loss_keys'])
    line('log interval (flushes: 1 per interval)', lambda r: r['log_interval'])
    line('wall time of the step (s, CPU, counting)', lambda r: f'{r["wall_s"]:.2f}')
    line('- inside ATen ops', lambda r: f'{r["aten_s"]:.2f}')
    line('- Python and dispatch (the rest)', lambda r: f'{r["python_s"]:.2f}')
    return '\n'.join(lines)
