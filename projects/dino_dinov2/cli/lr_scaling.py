"""``--batch-size``, ``--lr`` and ``--auto-scale-lr {linear,sqrt}``, and a log of the result.

The recipe's lr (1e-4 for the head, x0.1 for the backbone) belongs to a total batch of 16
(``auto_scale_lr.base_batch_size`` in the configs). With a different total batch
(batch per process x processes) the lr can be scaled by the ratio (``linear``, Goyal et
al.) or by its square root (``sqrt``, Krizhevsky 2014, the rule the original used by hand:
batch 32 -> lr x sqrt(2)).

Why not mmengine's ``auto_scale_lr`` alone: it only knows the linear rule and logs the
ratio, not the lrs it produced. Here the scaled lr is written into the config before the
Runner is built (mmengine's own scaling is turned off so it is not applied twice), and
:class:`BatchLrLoggerHook` logs the effective total batch and the lr of every optimizer
param group as the optimizer really holds them when training starts.
"""
from __future__ import annotations

import math
from typing import Optional

from ..engine.batch_lr import DEFAULT_BASE_BATCH, BatchLr, lr_scale_factor  # noqa: F401
from ..errors import ConfigError


def apply_batch_and_lr(cfg, batch_size: Optional[int] = None, lr: Optional[float] = None,
                       rule: Optional[str] = None, world_size: int = 1) -> BatchLr:
    """Write ``--batch-size``/``--lr``/``--auto-scale-lr`` into ``cfg``; return the summary.

    ``batch_size`` is per process (``train_dataloader.batch_size``); ``lr`` replaces
    ``optim_wrapper.optimizer.lr`` (the head's lr: ``paramwise_cfg`` multipliers such as
    the backbone's x0.1 apply on top of it) and, with ``rule``, is the lr of the base total
    batch. A config with ``auto_scale_lr.enable=True`` and no ``rule`` scales linearly, as
    mmengine would.
    """
    if batch_size is not None:
        if batch_size <= 0:
            raise ConfigError(f'--batch-size must be positive, got {batch_size}')
        cfg.train_dataloader.batch_size = batch_size
    auto = cfg.get('auto_scale_lr', None) or {}
    if rule is None and auto.get('enable', False):
        rule = 'linear'
    optimizer = cfg.get('optim_wrapper', {}).get('optimizer', None)
    if optimizer is None or 'lr' not in optimizer:
        if lr is not None or rule is not None:
            raise ConfigError('--lr/--auto-scale-lr need optim_wrapper.optimizer.lr in the config')
        base_lr = float('nan')
    else:
        base_lr = float(optimizer.lr)
    if lr is not None:
        if lr <= 0:
            raise ConfigError(f'--lr must be positive, got {lr}')
        base_lr = float(lr)
    summary = BatchLr(batch_per_process=int(cfg.train_dataloader.batch_size),
                      world_size=int(world_size),
                      base_batch=int(auto.get('base_batch_size', DEFAULT_BASE_BATCH)),
                      base_lr=base_lr, rule=rule)
    if optimizer is not None and 'lr' in optimizer:
        optimizer.lr = summary.lr
    if 'auto_scale_lr' in cfg:
        cfg.auto_scale_lr.enable = False  # applied above; mmengine must not scale again
    return summary


def log_batch_and_lr(cfg, summary: BatchLr) -> None:
    """Add a :class:`BatchLrLoggerHook` reporting ``summary`` to ``cfg.custom_hooks``."""
    hooks = [h for h in (cfg.get('custom_hooks', None) or [])
             if h.get('type') != 'BatchLrLoggerHook']
    base_lr = None if math.isnan(summary.base_lr) else summary.base_lr
    cfg.custom_hooks = hooks + [dict(type='BatchLrLoggerHook', rule=summary.rule,
                                     base_batch=summary.base_batch, base_lr=base_lr)]
