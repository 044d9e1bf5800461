"""One training step computed two ways, compared: losses, assignments, gradients.

This project's training step (``FastDINO`` and its parts, ``LeanOptimWrapper``,
``DeferredRuntimeInfoHook``) must compute what mmdet's and mmengine's stock classes
compute. :func:`stock_mmdet` turns a config into its stock twin (``DINO``, ``DINOHead``,
``HungarianAssigner``, ``CdnQueryGenerator``, ``DetDataPreprocessor``, mmcv's deformable
attention, mmengine's optimizer constructor and wrapper and ``RuntimeInfoHook``: the "mmdet
step" of the comparisons here and of ``tools/benchmark.py --host-profile``).
:func:`compare_step` builds both models with the same weights, runs one forward, loss and
backward of the same batch (same denoising noise: the same seed before each forward) and
reports the largest differences.
"""
from __future__ import annotations

import contextlib
import copy
from typing import Dict, List, Optional, Sequence, Tuple

from unittest import mock

import numpy as np
import torch


def stock_mmdet(cfg):
    """A copy of ``cfg`` with mmdet's and mmengine's own classes where this project's
    replace them in the training step (same parameters and state-dict keys)."""
    cfg = copy.deepcopy(cfg)
    model = cfg.model
    for key in ('deform_attn_impl', 'checkpoint_encoder', 'checkpoint_decoder'):
        model.pop(key, None)
    model.type = 'DINO'
    model.data_preprocessor.type = 'DetDataPreprocessor'
    model.bbox_head.type = 'DINOHead'
    if model.bbox_head.loss_cls.type == 'Float32FocalLoss':
        model.bbox_head.loss_cls.type = 'FocalLoss'
    model.train_cfg.assigner.type = 'HungarianAssigner'
    cfg.optim_wrapper.constructor = 'DefaultOptimWrapperConstructor'
    if cfg.optim_wrapper.get('type') == 'LeanOptimWrapper':
        cfg.optim_wrapper.type = 'OptimWrapper'
    cfg.default_hooks.runtime_info = dict(type='RuntimeInfoHook')
    cfg.default_hooks.nan_guard = dict(type='NanGuardHook')
    return cfg


def batch(image_sizes: Sequence[Tuple[int, int]], num_classes: int,
          num_gt: Sequence[int]) -> dict:
    """A training batch of images of the given sizes (different sizes: padded, masked)."""
    from .benchmark import synthetic_batch
    parts = [synthetic_batch(1, size, num_classes, n, seed=i)
             for i, (size, n) in enumerate(zip(image_sizes, num_gt))]
    return dict(inputs=[p['inputs'][0] for p in parts],
                data_samples=[p['data_samples'][0] for p in parts])


@contextlib.contextmanager
def _recording_assignments(assigner, recorded: List[Tuple[np.ndarray, np.ndarray]]):
    """Each matching's (matched predictions, their gts) appended to ``recorded`` in call
    order (decoder layers, then the encoder proposals; images inside), from outside: the
    stock assigner's ``assign`` or this project's ``assign_batch``, patched on its class
    while the block runs."""
    from mmdet.models.task_modules.assigners import HungarianAssigner

    from projects.dino_dinov2.models import BatchHungarianAssigner
    if isinstance(assigner, BatchHungarianAssigner):
        real = BatchHungarianAssigner.assign_batch

        def assign_batch(self, preds, *args, **kwargs):
            out = real(self, preds, *args, **kwargs)
            for s in range(len(preds[0]) if preds else 0):
                for image in out:
                    recorded.append((np.asarray(image[s][0]), np.asarray(image[s][1])))
            return out
        patch = mock.patch.object(BatchHungarianAssigner, 'assign_batch', assign_batch)
    else:
        real = HungarianAssigner.assign

        def assign(self, *args, **kwargs):
            result = real(self, *args, **kwargs)
            pos = torch.nonzero(result.gt_inds > 0).flatten()
            recorded.append((pos.cpu().numpy(), (result.gt_inds[pos] - 1).cpu().numpy()))
            return result
        patch = mock.patch.object(HungarianAssigner, 'assign', assign)
    with patch:
        yield


def _run(cfg, data: dict, seed: int) -> Dict:
    from mmdet.registry import MODELS

    from .benchmark import quiet_mmengine
    with quiet_mmengine():
        torch.manual_seed(0)
        model = MODELS.build(copy.deepcopy(cfg.model))
        model.init_weights()
    model.train()
    recorded: List[Tuple[np.ndarray, np.ndarray]] = []
    with _recording_assignments(model.bbox_head.assigner, recorded):
        torch.manual_seed(seed)
        processed = model.data_preprocessor(copy.deepcopy(data), True)
        losses = model._run_forward(processed, mode='loss')
        parsed, log_vars = model.parse_losses(losses)
        parsed.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()
             if p.grad is not None}
    return dict(losses={k: float(v.detach()) for k, v in log_vars.items()}, grads=grads,
                assignments=recorded, keys=list(log_vars))


def compare_step(cfg, data: dict, seed: int = 1) -> Dict:
    """This project's step (the config as it is) against mmdet's (:func:`stock_mmdet`)."""
    lean = _run(cfg, data, seed)
    stock = _run(stock_mmdet(cfg), data, seed)
    loss_rel = max(abs(lean['losses'][k] - v) / max(abs(v), 1e-12)
                   for k, v in stock['losses'].items())
    grad_abs, grad_rel = 0.0, 0.0
    for name, g in stock['grads'].items():
        d = (lean['grads'][name] - g).abs().max().item()
        grad_abs = max(grad_abs, d)
        grad_rel = max(grad_rel, d / max(g.abs().max().item(), 1e-12))
    same_assignments = len(lean['assignments']) == len(stock['assignments']) and all(
        np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
        for a, b in zip(lean['assignments'], stock['assignments']))
    return dict(loss_keys_equal=lean['keys'] == stock['keys'],
                num_losses=len(stock['keys']), loss_max_rel=loss_rel,
                grads_compared=len(stock['grads']),
                grads_missing=sorted(set(stock['grads']) ^ set(lean['grads'])),
                grad_max_abs=grad_abs, grad_max_rel=grad_rel,
                assignments=len(stock['assignments']), same_assignments=same_assignments,
                total_loss=(lean['losses']['loss'], stock['losses']['loss']))


def loss_curve(config_path: str, data_root: str, work_dir: str, iters: int = 50,
               batch_size: int = 4, stock: bool = False, seed: int = 0,
               options: Optional[Dict] = None) -> List[Dict]:
    """The logged values of each of ``iters`` training iterations of ``config_path`` on
    ``data_root`` (``tools/train.py`` in its own process: the real Runner, loader and
    hooks; seeded, deterministic; one epoch over the first ``iters * batch_size``
    images), through this project's step or (``stock``) mmdet's and mmengine's
    (:func:`stock_mmdet`, written to ``work_dir/stock_config.py``)."""
    import glob
    import json
    import os
    import os.path as osp
    import subprocess
    import sys
    repo = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
    config = config_path
    options = {
        **(options or {}),
        'train_dataloader.dataset.data_root': data_root.rstrip('/') + '/',
        'train_dataloader.dataset.indices': iters * batch_size,
        'train_dataloader.batch_size': batch_size, 'train_cfg.max_epochs': 1,
        'train_cfg.val_begin': 10 ** 6, 'default_hooks.logger.interval': 1,
        'log_processor.window_size': 1, 'randomness.seed': seed,
        'randomness.deterministic': True, 'default_hooks.checkpoint.interval': 10 ** 6,
    }
    if stock:
        from projects.dino_dinov2.cli.config_setup import load_config
        os.makedirs(work_dir, exist_ok=True)
        config = osp.join(work_dir, 'stock_config.py')
        stock_mmdet(load_config(config_path)).dump(config)
    args = [sys.executable, osp.join(repo, 'tools', 'train.py'), config, '--work-dir',
            work_dir, '--cfg-options', *[f'{k}={v}' for k, v in options.items()]]
    subprocess.run(args, check=True, cwd=repo, stdout=subprocess.DEVNULL)
    path = sorted(glob.glob(osp.join(work_dir, '*', 'vis_data', 'scalars.json')))[-1]
    with open(path) as f:
        return [r for r in map(json.loads, f) if 'loss' in r]


def _spread(a: List[Dict], b: List[Dict], key: str = 'loss') -> Tuple[float, float, int]:
    """(largest, mean) relative difference of ``key`` per iteration, and the first
    iteration where they differ by more than 1e-6."""
    rel = [abs(x[key] - y[key]) / max(abs(y[key]), 1e-12) for x, y in zip(a, b)]
    first = next((x['iter'] for x, r in zip(a, rel) if r > 1e-6), 0)
    return max(rel), sum(rel) / len(rel), first


def _main(argv=None) -> int:
    """``python tools/analysis_tools/step_equality.py CONFIG DATA_ROOT OUT_DIR [ITERS]``:
    the loss curves of this project's step and of mmdet's step, and as yardsticks of float
    rounding each with its optimizer's update run another way (per tensor instead of fused
    and the reverse: the same arithmetic in another order): DETR's matching turns any
    rounding difference into a different curve after a few iterations."""
    import os.path as osp
    import sys
    argv = sys.argv[1:] if argv is None else argv
    config, data_root, out = argv[:3]
    iters = int(argv[3]) if len(argv) > 3 else 50
    lean = loss_curve(config, data_root, osp.join(out, 'lean'), iters)
    stock = loss_curve(config, data_root, osp.join(out, 'mmdet'), iters, stock=True)
    rounding = loss_curve(config, data_root, osp.join(out, 'lean_unfused'), iters,
                          options={'optim_wrapper.optimizer.fused': False})
    stock_fused = loss_curve(config, data_root, osp.join(out, 'mmdet_fused'), iters,
                             stock=True, options={'optim_wrapper.optimizer.fused': True})
    print(f'{len(lean)} iterations logged (total loss, relative differences per iteration)')
    print('| pair | largest | mean | first iteration > 1e-6 | mean loss, last 10 |')
    print('| --- | ---: | ---: | ---: | --- |')

    def tail(rows):
        return sum(r['loss'] for r in rows[-10:]) / len(rows[-10:])
    for name, (one, other) in (
            ('this step vs mmdet step', (lean, stock)),
            ('this step vs itself, optimizer not fused (rounding only)', (lean, rounding)),
            ('mmdet step vs itself, optimizer fused (rounding only)', (stock, stock_fused))):
        big, mean, first = _spread(one, other)
        print(f'| {name} | {big:.1e} | {mean:.1e} | {first or "none"} | '
              f'{tail(one):.4f} vs {tail(other):.4f} |')
    return 0


if __name__ == '__main__':  # run as a script: the package and analysis_tools importable
    import os.path as _osp
    import sys as _sys
    _tools = _osp.dirname(_osp.dirname(_osp.abspath(__file__)))
    _sys.path[:0] = [_osp.dirname(_tools), _tools]
    from analysis_tools.step_equality import _main as _step_equality_main
    raise SystemExit(_step_equality_main())
