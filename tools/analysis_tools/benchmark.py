"""Training benchmark: time per iteration, peak memory and inference speed.

Reproduces the seed's "Ablation of training configurations" table
(``| Backbone | Precision | Batch Size | Time per Iteration | Memory Usage |``) for any
grid of configs x precision (full, mixed) x batch size, with the model built from the
config through mmdet's registries exactly as the Runner builds it, and one training
iteration being ``model.train_step(data, optim_wrapper)`` (data preprocessor, forward,
loss, backward, gradient clipping, optimizer step), as in mmengine's ``IterBasedTrainLoop``.

- Data: synthetic batches (uint8 noise images of a fixed size with random boxes, the
  default; no data loading cost) or the config's own train dataloader (``real_data``;
  the time to fetch a batch is reported apart as data time).
- Time: wall clock around each iteration, ``torch.cuda.synchronize`` on both sides on a
  GPU; median and spread (interquartile range, standard deviation) after warm-up.
- Memory: on a GPU ``torch.cuda.max_memory_allocated`` / ``max_memory_reserved`` since a
  reset after the model and optimizer were built (weights and optimizer state count,
  like detectron2's ``max_mem``). On the CPU the process's peak resident memory: the
  Linux high-water mark (VmHWM), reset through ``/proc/self/clear_refs`` where allowed,
  else ``resource.getrusage`` (a lifetime peak, so later cells never read lower).
- Mixed precision: mmengine's AmpOptimWrapper via the project's ``AutoAmpOptimWrapper``
  (bfloat16 where supported, else float16; a config's ``amp_dtype`` wins: float16 with a
  loss scaler in the original-equivalent configs, as the original); inference under the
  same autocast.
- Baseline: one or more other variants (another config and/or cfg-options) measured in
  the same process, interleaved cell by cell, so ratios compare like with like.
"""
from __future__ import annotations

import copy
import gc
import json
import logging
import os
import os.path as osp
import resource
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from projects.dino_dinov2.errors import ConfigError

PRECISIONS = ('full', 'mixed')
PLAIN_WRAPPERS = ('OptimWrapper', 'LeanOptimWrapper')  # what --amp turns into AMP
TABLE_HEADER = ('| Backbone | Precision | Batch Size | Time per Iteration | Memory Usage |\n'
                '| --- | --- | --- | --- | --- |')

_BACKBONE_NAMES = (('vit_small', 'ViT-S'), ('vit_base', 'ViT-B'), ('vit_large', 'ViT-L'),
                   ('vit_giant', 'ViT-g'), ('vit_tiny', 'ViT-Ti'))


@dataclass
class Variant:
    """A model to benchmark: a config file plus ``--cfg-options``, and a table label."""
    config: str
    cfg_options: Dict = field(default_factory=dict)
    label: Optional[str] = None
    role: str = 'candidate'  # or 'baseline'


@dataclass
class Result:
    """One cell of the grid. Times in seconds, memory in MiB."""
    backbone: str
    config: str
    role: str
    precision: str
    batch_size: int
    device: str
    data: str  # 'synthetic' or 'real'
    image_size: Optional[Tuple[int, int]]  # (H, W) of synthetic images
    amp_dtype: Optional[str]
    warmup: int
    iters: int
    iter_time: float  # median
    iter_time_p25: float
    iter_time_p75: float
    iter_time_std: float
    iter_times: List[float]
    data_time: Optional[float]  # median, real data only
    memory_mib: float  # the table's "Memory Usage": max allocated (GPU) / peak RSS (CPU)
    memory_reserved_mib: Optional[float]
    memory_kind: str
    infer_images_per_s: Optional[float]
    infer_batch_time: Optional[float]
    cfg_options: Dict = field(default_factory=dict)

    def row(self) -> str:
        """A row of the original's table."""
        return (f'| {self.backbone} | {self.precision.capitalize()} | {self.batch_size} | '
                f'{self.iter_time:.4f} s | {self.memory_mib:.0f} MiB |')


# ---------------------------------------------------------------------------- config

def backbone_label(cfg) -> str:
    """'ViT-S', 'ViT-B', ... from ``model.backbone.model_name``; a custom depth or width
    is appended (``ViT-S (depth 4, dim 192)``)."""
    backbone = cfg.model.get('backbone', {})
    name = str(backbone.get('model_name', backbone.get('type', 'model')))
    label = next((short for key, short in _BACKBONE_NAMES if name.startswith(key)), name)
    kwargs = backbone.get('model_kwargs') or {}
    extra = [f'{short} {kwargs[key]}' for key, short in (('depth', 'depth'),
                                                         ('embed_dim', 'dim'))
             if key in kwargs]
    return f'{label} ({", ".join(extra)})' if extra else label


def load_variant_config(variant: Variant, pretrained: bool = False):
    """The config of a variant, with pretrained backbone weights off unless asked for
    (timing does not depend on weight values, and they would be downloaded)."""
    import projects.dino_dinov2  # noqa: F401  (registers the plugin)
    from mmengine.registry import init_default_scope

    from projects.dino_dinov2.cli.config_setup import load_config
    cfg = load_config(variant.config, variant.cfg_options or None)
    init_default_scope(cfg.get('default_scope', 'mmdet'))
    backbone = cfg.model.get('backbone', {})
    if not pretrained and backbone.get('pretrained', None) is True:
        backbone['pretrained'] = False
    return cfg


def default_image_size(cfg) -> Tuple[int, int]:
    """(H, W) of synthetic images: the test pipeline's Resize scale (the recipe's 1333 x
    800 gives 800 x 1333), else the backbone's ``img_size``, else 512 x 512."""
    def find(pipeline):
        for t in pipeline or []:
            if isinstance(t, dict) and t.get('type') == 'Resize' and 'scale' in t:
                scale = t['scale']
                if isinstance(scale, int):
                    return scale, scale
                return min(scale), max(scale)
        return None
    for key in ('test_dataloader', 'val_dataloader'):
        dl = cfg.get(key)
        if dl is not None:
            found = find(dl.get('dataset', {}).get('pipeline'))
            if found:
                return found
    size = cfg.model.get('backbone', {}).get('img_size')
    if size:
        return (size, size) if isinstance(size, int) else tuple(size)
    return 512, 512


def num_classes_of(cfg) -> int:
    head = cfg.model.get('bbox_head', {})
    return int(head.get('num_classes', 80))


# ---------------------------------------------------------------------------- data

def synthetic_batch(batch_size: int, image_size: Tuple[int, int], num_classes: int,
                    num_gt: int = 5, seed: int = 0) -> dict:
    """A batch as mmdet's PackDetInputs + pseudo_collate make it: ``inputs`` a list of
    (3, H, W) uint8 tensors, ``data_samples`` DetDataSamples with ``gt_instances``
    (boxes xyxy in pixels as HorizontalBoxes, labels) and test-time metainfo."""
    from mmdet.structures import DetDataSample
    from mmdet.structures.bbox import HorizontalBoxes
    from mmengine.structures import InstanceData
    h, w = image_size
    g = torch.Generator().manual_seed(seed)
    inputs, samples = [], []
    for i in range(batch_size):
        inputs.append(torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g))
        wh = torch.rand(num_gt, 2, generator=g) * 0.45 + 0.05  # 5% .. 50% of the side
        wh = wh * torch.tensor([w, h])
        xy = torch.rand(num_gt, 2, generator=g) * (torch.tensor([w, h]) - wh)
        boxes = torch.cat([xy, xy + wh], dim=1)
        sample = DetDataSample(metainfo=dict(
            img_id=i, img_path=f'synthetic_{i}.png', ori_shape=(h, w), img_shape=(h, w),
            scale_factor=(1.0, 1.0), flip=False, flip_direction=None))
        sample.gt_instances = InstanceData(
            bboxes=HorizontalBoxes(boxes),
            labels=torch.randint(0, num_classes, (num_gt, ), generator=g))
        samples.append(sample)
    return dict(inputs=inputs, data_samples=samples)


def _cycle(loader) -> Iterator:
    while True:
        for batch in loader:
            yield batch


def build_loader(cfg, key: str, batch_size: int):
    """The config's ``train_dataloader``/``val_dataloader`` at ``batch_size``."""
    from mmengine.runner import Runner
    dl_cfg = copy.deepcopy(cfg[key])
    dl_cfg['batch_size'] = batch_size
    return Runner.build_dataloader(dl_cfg, seed=0)


# ---------------------------------------------------------------------------- memory

class PeakMemory:
    """Peak memory since :meth:`reset`, in MiB (see the module docstring)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.kind = 'cuda_max_allocated' if device.type == 'cuda' else 'cpu_peak_rss'
        self._resettable = False

    def reset(self) -> None:
        if self.device.type == 'cuda':
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            return
        try:
            with open('/proc/self/clear_refs', 'w') as f:
                f.write('5')  # Linux: reset the resident-set high-water mark
            self._resettable = self._vm_hwm() is not None
        except OSError:
            self._resettable = False
        if not self._resettable:
            self.kind = 'cpu_lifetime_peak_rss'

    @staticmethod
    def _vm_hwm() -> Optional[float]:
        try:
            with open('/proc/self/status') as f:
                for line in f:
                    if line.startswith('VmHWM:'):
                        return float(line.split()[1]) / 1024  # kB -> MiB
        except OSError:
            return None
        return None

    def read(self) -> Tuple[float, Optional[float]]:
        """(peak, reserved-or-None) in MiB."""
        if self.device.type == 'cuda':
            torch.cuda.synchronize(self.device)
            return (torch.cuda.max_memory_allocated(self.device) / 2**20,
                    torch.cuda.max_memory_reserved(self.device) / 2**20)
        if self._resettable:
            hwm = self._vm_hwm()
            if hwm is not None:
                return hwm, None
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, None  # KiB


# ---------------------------------------------------------------------------- timing

def _sync(device: torch.device) -> None:
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def _autocast(device: torch.device, dtype: Optional[torch.dtype]):
    import contextlib
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


class quiet_mmengine:
    """Raise mmengine's current logger to WARNING for a while: building a model and
    its optimizer logs every parameter's init and lr multiplier at INFO."""

    def __enter__(self):
        from mmengine.logging import MMLogger
        self.logger = MMLogger.get_current_instance()
        self.level = self.logger.level
        self.handler_levels = [h.level for h in self.logger.handlers]
        self.logger.setLevel(logging.WARNING)
        for h in self.logger.handlers:
            h.setLevel(max(h.level, logging.WARNING))
        return self

    def __exit__(self, *exc):
        self.logger.setLevel(self.level)
        for h, level in zip(self.logger.handlers, self.handler_levels):
            h.setLevel(level)
        return False


def build_model(cfg, precision: str, device: torch.device, seed: int = 0):
    """(model, optim_wrapper, amp dtype name or None) built from the config."""
    with quiet_mmengine():
        return _build_model(cfg, precision, device, seed)


def _build_model(cfg, precision: str, device: torch.device, seed: int = 0):
    from mmdet.registry import MODELS
    from mmengine.optim import build_optim_wrapper

    from projects.dino_dinov2.cli.config_setup import enable_amp
    torch.manual_seed(seed)
    model = MODELS.build(copy.deepcopy(cfg.model))
    model.init_weights()
    model.to(device)
    run_cfg = copy.deepcopy(cfg)
    amp_dtype = None
    wrapper = run_cfg.optim_wrapper
    amp_types = ('AmpOptimWrapper', 'AutoAmpOptimWrapper')
    if precision not in PRECISIONS:
        raise ConfigError(f'precision must be one of {PRECISIONS}, got {precision!r}')
    if precision == 'mixed' and wrapper.get('type', 'OptimWrapper') in PLAIN_WRAPPERS:
        enable_amp(run_cfg)
    elif precision == 'full' and wrapper.get('type') in amp_types:
        # a config that trains with AMP: measure it without for the 'full' row
        wrapper['type'] = 'LeanOptimWrapper'
        for key in ('loss_scale', 'dtype', 'use_fsdp'):
            wrapper.pop(key, None)
    optim_wrapper = build_optim_wrapper(model, run_cfg.optim_wrapper)
    cast = getattr(optim_wrapper, 'cast_dtype', None)
    if precision == 'mixed':
        amp_dtype = str(cast).replace('torch.', '') if cast is not None else 'float16'
    return model, optim_wrapper, amp_dtype


def _spread(times: Sequence[float]) -> Tuple[float, float, float, float]:
    arr = np.asarray(times, dtype=float)
    return (float(np.median(arr)), float(np.percentile(arr, 25)),
            float(np.percentile(arr, 75)), float(arr.std(ddof=1)) if len(arr) > 1 else 0.0)


def run_cell(variant: Variant, precision: str, batch_size: int,
             device: Optional[str] = None, iters: int = 20, warmup: int = 5,
             infer_iters: Optional[int] = None, image_size: Optional[Tuple[int, int]] = None,
             real_data: bool = False, num_gt: int = 5, pretrained: bool = False) -> Result:
    """Benchmark one (variant, precision, batch size) cell; see the module docstring.

    ``infer_iters`` 0 skips the inference measurement (default: ``iters``).
    """
    if iters < 1 or warmup < 0:
        raise ConfigError(f'iters must be >= 1 and warmup >= 0, got {iters}, {warmup}')
    dev = torch.device(device or ('cuda' if torch.cuda.is_available() else 'cpu'))
    cfg = load_variant_config(variant, pretrained)
    label = variant.label or backbone_label(cfg)
    if image_size is None and not real_data:
        image_size = default_image_size(cfg)
    if dev.type == 'cuda':  # as the Runner sets it from env_cfg
        torch.backends.cudnn.benchmark = bool(
            cfg.get('env_cfg', {}).get('cudnn_benchmark', False))
    model, optim_wrapper, amp_dtype = build_model(cfg, precision, dev)
    cast = getattr(torch, amp_dtype) if amp_dtype else None

    if real_data:
        train_batches = _cycle(build_loader(cfg, 'train_dataloader', batch_size))
        val_batches = _cycle(build_loader(cfg, 'val_dataloader', batch_size))
    else:
        batch = synthetic_batch(batch_size, image_size, num_classes_of(cfg), num_gt)
        train_batches = val_batches = None

    memory = PeakMemory(dev)
    gc.collect()
    memory.reset()
    model.train()
    times, data_times = [], []
    for i in range(warmup + iters):
        t0 = time.perf_counter()
        data = next(train_batches) if real_data else batch
        t1 = time.perf_counter()
        _sync(dev)
        t2 = time.perf_counter()
        model.train_step(data, optim_wrapper)
        _sync(dev)
        t3 = time.perf_counter()
        if i >= warmup:
            times.append(t3 - t2)
            data_times.append(t1 - t0)
    peak, reserved = memory.read()

    infer_ips = infer_time = None
    n_infer = iters if infer_iters is None else infer_iters
    if n_infer > 0:
        model.eval()
        infer_times, images = [], 0
        with torch.no_grad(), _autocast(dev, cast):
            for i in range(min(warmup, 2) + n_infer):
                data = next(val_batches) if real_data else batch
                _sync(dev)
                t0 = time.perf_counter()
                model.test_step(data)
                _sync(dev)
                if i >= min(warmup, 2):
                    infer_times.append(time.perf_counter() - t0)
                    images += len(data['inputs'])  # a last val batch may be short
        infer_time = float(np.median(infer_times))
        infer_ips = images / float(np.sum(infer_times))

    med, p25, p75, std = _spread(times)
    result = Result(
        backbone=label, config=variant.config, role=variant.role, precision=precision,
        batch_size=batch_size, device=str(dev), data='real' if real_data else 'synthetic',
        image_size=None if real_data else tuple(image_size), amp_dtype=amp_dtype,
        warmup=warmup, iters=iters, iter_time=med, iter_time_p25=p25, iter_time_p75=p75,
        iter_time_std=std, iter_times=times,
        data_time=float(statistics.median(data_times)) if real_data else None,
        memory_mib=peak, memory_reserved_mib=reserved, memory_kind=memory.kind,
        infer_images_per_s=infer_ips, infer_batch_time=infer_time,
        cfg_options=dict(variant.cfg_options or {}))
    del model, optim_wrapper, train_batches, val_batches
    gc.collect()
    if dev.type == 'cuda':
        torch.cuda.empty_cache()
    return result


def run_grid(variants: Sequence[Variant], precisions: Sequence[str] = ('full', ),
             batch_sizes: Sequence[int] = (2, ),
             baseline: Optional[Sequence[Union[Variant, Sequence[Variant]]]] = None,
             log=print, **kwargs) -> List[Result]:
    """Every variant x precision x batch size; with ``baseline`` (per variant, one
    baseline variant or several, e.g. the original-equivalent mode with pure-PyTorch and
    with CUDA deformable attention) each cell is followed by the same cell of each of its
    baselines."""
    if baseline is not None and len(baseline) != len(variants):
        raise ConfigError('one baseline entry per variant is needed')
    for p in precisions:
        if p not in PRECISIONS:
            raise ConfigError(f'precision must be one of {PRECISIONS}, got {p!r}')
    results = []
    for v_i, variant in enumerate(variants):
        for precision in precisions:
            for bs in batch_sizes:
                group = [variant]
                if baseline is not None:
                    base = baseline[v_i]
                    group += [base] if isinstance(base, Variant) else list(base)
                for v in group:
                    r = run_cell(v, precision, bs, **kwargs)
                    if log:
                        log(f'[{r.role}] {r.backbone} {r.precision} batch {r.batch_size}: '
                            f'{r.iter_time:.4f} s/iter (IQR {r.iter_time_p25:.4f}-'
                            f'{r.iter_time_p75:.4f}), {r.memory_mib:.0f} MiB'
                            + (f', {r.infer_images_per_s:.2f} img/s inference'
                               if r.infer_images_per_s else ''))
                    results.append(r)
    return results


# ---------------------------------------------------------------------------- reports

def markdown_table(results: Sequence[Result]) -> str:
    """The original's table: Backbone | Precision | Batch Size | Time per Iteration |
    Memory Usage."""
    return '\n'.join([TABLE_HEADER] + [r.row() for r in results])


def details_table(results: Sequence[Result]) -> str:
    """Everything else measured, one row per cell."""
    lines = ['| Backbone | Role | Precision | Batch Size | Median (IQR) s | Std s | Data time s '
             '| Memory (reserved) MiB | Inference img/s |',
             '| --- | --- | --- | --- | --- | --- | --- | --- | --- |']
    for r in results:
        mem = f'{r.memory_mib:.0f}' + (f' ({r.memory_reserved_mib:.0f})'
                                       if r.memory_reserved_mib is not None else '')
        lines.append(
            f'| {r.backbone} | {r.role} | {r.precision}'
            f'{f" ({r.amp_dtype})" if r.amp_dtype else ""} | {r.batch_size} | '
            f'{r.iter_time:.4f} ({r.iter_time_p25:.4f}-{r.iter_time_p75:.4f}) | '
            f'{r.iter_time_std:.4f} | '
            f'{"-" if r.data_time is None else f"{r.data_time:.4f}"} | {mem} | '
            f'{"-" if r.infer_images_per_s is None else f"{r.infer_images_per_s:.2f}"} |')
    return '\n'.join(lines)


def ratio_table(results: Sequence[Result]) -> str:
    """Candidate / baseline ratios, pair by pair (results as :func:`run_grid` orders
    them with a baseline). Below 1 means the candidate is faster / smaller; the
    inference ratio is images/s, above 1 means the candidate is faster."""
    lines = ['| Backbone | Baseline | Precision | Batch Size | Time ratio | Memory ratio | '
             'Inference speed ratio |',
             '| --- | --- | --- | --- | --- | --- | --- |']
    for cand, base in pairs(results):
        inf = ('-' if not (cand.infer_images_per_s and base.infer_images_per_s)
               else f'{cand.infer_images_per_s / base.infer_images_per_s:.3f}')
        lines.append(f'| {cand.backbone} | {base.backbone} | {cand.precision.capitalize()} | '
                     f'{cand.batch_size} | {cand.iter_time / base.iter_time:.3f} | '
                     f'{cand.memory_mib / base.memory_mib:.3f} | {inf} |')
    return '\n'.join(lines)


def pairs(results: Sequence[Result]) -> List[Tuple[Result, Result]]:
    out, cand = [], None
    for r in results:
        if r.role == 'candidate':
            cand = r
        elif r.role == 'baseline' and cand is not None and (
                r.precision, r.batch_size) == (cand.precision, cand.batch_size):
            out.append((cand, r))
    return out


def report_markdown(results: Sequence[Result]) -> str:
    main = [r for r in results if r.role == 'candidate']
    base = [r for r in results if r.role == 'baseline']
    device = results[0].device if results else '-'
    data = results[0].data if results else '-'
    size = results[0].image_size if results else None
    parts = ['# Training benchmark', '',
             f'Device: {device_name(device)}; data: {data}'
             + (f' ({size[0]}x{size[1]} px)' if size else '')
             + f'; {results[0].iters if results else 0} timed iterations after '
             f'{results[0].warmup if results else 0} warm-up.', '',
             markdown_table(main)]
    if base:
        parts += ['', '## Baseline', '', markdown_table(base), '', '## Ratios (candidate / '
                  'baseline)', '', ratio_table(results)]
    parts += ['', '## Details', '', details_table(results), '']
    return '\n'.join(parts)


def device_name(device: str) -> str:
    if device.startswith('cuda') and torch.cuda.is_available():
        return f'{device} ({torch.cuda.get_device_name(torch.device(device))})'
    threads = torch.get_num_threads()
    return (f'{device} ({os.cpu_count()} cores, {threads} torch '
            f'thread{"" if threads == 1 else "s"})')


def write_report(results: Sequence[Result], out_dir: str) -> Dict[str, str]:
    """benchmark.json (every field of every cell) and benchmark.md."""
    os.makedirs(out_dir, exist_ok=True)
    paths = dict(json=osp.join(out_dir, 'benchmark.json'),
                 md=osp.join(out_dir, 'benchmark.md'))
    with open(paths['json'], 'w') as f:
        json.dump(dict(device=device_name(results[0].device) if results else None,
                       torch=torch.__version__, results=[asdict(r) for r in results],
                       ratios=[dict(candidate=c.backbone, baseline=b.backbone,
                                    precision=c.precision, batch_size=c.batch_size,
                                    time=c.iter_time / b.iter_time,
                                    memory=c.memory_mib / b.memory_mib,
                                    inference=(c.infer_images_per_s / b.infer_images_per_s
                                               if c.infer_images_per_s and
                                               b.infer_images_per_s else None))
                               for c, b in pairs(results)]), f, indent=2)
    with open(paths['md'], 'w') as f:
        f.write(report_markdown(results))
    return paths


__all__ = [
    'PRECISIONS', 'Variant', 'Result', 'backbone_label', 'load_variant_config',
    'default_image_size', 'synthetic_batch', 'PeakMemory', 'build_model', 'run_cell',
    'run_grid', 'markdown_table', 'details_table', 'ratio_table', 'pairs',
    'report_markdown', 'write_report'
]
