"""One training step computed two ways, compared: losses, assignments, gradients.

The lean training step (:mod:`..models.lean_losses`, ``FastDINO(lean_step=True)``) must
compute what mmdet's code computes. :func:`compare_step` builds the model of a config
twice with the same weights, once with the lean switches and once with mmdet's paths
(``model.lean_step=False``, ``bbox_head.batched_losses=False``), runs one forward, loss and
backward of the same batch (same denoising noise: the same seed before each forward) and
reports the largest differences.
"""
from __future__ import annotations

import copy
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch

STOCK = {'model.lean_step': False, 'model.bbox_head.batched_losses': False}


def batch(image_sizes: Sequence[Tuple[int, int]], num_classes: int,
          num_gt: Sequence[int]) -> dict:
    """A training batch of images of the given sizes (different sizes: padded, masked)."""
    from .benchmark import synthetic_batch
    parts = [synthetic_batch(1, size, num_classes, n, seed=i)
             for i, (size, n) in enumerate(zip(image_sizes, num_gt))]
    return dict(inputs=[p['inputs'][0] for p in parts],
                data_samples=[p['data_samples'][0] for p in parts])


def _set_option(cfg, key: str, value) -> None:
    node = cfg
    parts = key.split('.')
    for p in parts[:-1]:
        node = node[p]
    node[parts[-1]] = value


def _run(cfg, data: dict, seed: int) -> Dict:
    from mmdet.registry import MODELS

    from .benchmark import quiet_mmengine
    with quiet_mmengine():
        torch.manual_seed(0)
        model = MODELS.build(copy.deepcopy(cfg.model))
        model.init_weights()
    model.train()
    recorded: List[Tuple[np.ndarray, np.ndarray]] = []
    assigner = model.bbox_head.assigner
    assign_batch = assigner.assign_batch

    def recording(preds, gts, metas, host=False, **kwargs):
        out = assign_batch(preds, gts, metas, host=host, **kwargs)
        for r in out:
            if host:
                recorded.append((np.asarray(r[0]), np.asarray(r[1])))
            else:
                recorded.append((r.get_extra_property('pos_inds').cpu().numpy(),
                                 r.get_extra_property('pos_assigned_gt_inds').cpu().numpy()))
        return out
    assigner.assign_batch = recording
    try:
        torch.manual_seed(seed)
        processed = model.data_preprocessor(copy.deepcopy(data), True)
        losses = model._run_forward(processed, mode='loss')
        parsed, log_vars = model.parse_losses(losses)
        parsed.backward()
    finally:
        del assigner.assign_batch
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()
             if p.grad is not None}
    return dict(losses={k: float(v) for k, v in log_vars.items()}, grads=grads,
                assignments=recorded, keys=list(log_vars))


def compare_step(cfg, data: dict, seed: int = 1) -> Dict:
    """Lean (the config as it is) against mmdet's paths (:data:`STOCK` applied)."""
    stock_cfg = copy.deepcopy(cfg)
    for key, value in STOCK.items():
        _set_option(stock_cfg, key, value)
    lean = _run(cfg, data, seed)
    stock = _run(stock_cfg, data, seed)
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
