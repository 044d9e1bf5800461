"""``tools/train.py``'s fine-tuning switches: ``--ema``, ``--save-best``, ``--early-stop N``,
``--aug``.

With ``--data-root`` (a user's own dataset) EMA and the best checkpoint are on unless
switched off; on the recipe configs they stay off unless asked for (the original had
neither: parity stays). Each function edits the config and returns its log line.
"""
from __future__ import annotations

from typing import List, Optional

from ..datasets.augment import set_augmentation
from ..errors import ConfigError

MONITOR = 'coco/bbox_mAP'
EMA_TYPES = ('EMAHook', 'DetEMAHook')


def _needs_validation(cfg, flag: str) -> None:
    if not cfg.get('val_cfg', None) or not cfg.get('val_dataloader', None) or \
            not cfg.get('val_evaluator', None):
        raise ConfigError(f'{flag} needs validation during training: this config has no '
                          'val_cfg/val_dataloader/val_evaluator')


def set_ema(cfg, on: bool) -> str:
    """Add :class:`DetEMAHook` to ``custom_hooks`` (``on``), or remove any EMA hook."""
    hooks = [h for h in (cfg.get('custom_hooks', None) or [])
             if not (on is False and h.get('type') in EMA_TYPES)]
    if on and not any(h.get('type') in EMA_TYPES for h in hooks):
        hooks.append(dict(type='DetEMAHook'))
    cfg.custom_hooks = hooks
    if not on:
        return 'EMA: off (validation and checkpoints use the trained weights)'
    hook = next(h for h in hooks if h.get('type') in EMA_TYPES)
    if hook.get('type') == 'DetEMAHook':
        return (f'EMA: on (momentum {hook.get("momentum", 0.007):g}, warm-up gamma '
                f'{hook.get("gamma", 100):g}: RF-DETR\'s decay 0.993, tau 100); validation, '
                'test and the checkpoints\' state_dict use the EMA weights')
    return f'EMA: on ({hook.get("type")} of the config)'


def set_save_best(cfg, on: bool) -> str:
    """``default_hooks.checkpoint.save_best`` = ``coco/bbox_mAP`` (``on``), or none."""
    ckpt = cfg.default_hooks.checkpoint
    if not on:
        ckpt.pop('save_best', None)
        ckpt.pop('rule', None)
        return 'best checkpoint: off'
    _needs_validation(cfg, '--save-best')
    if not ckpt.get('save_best', None):
        ckpt.save_best, ckpt.rule = MONITOR, 'greater'
    unit = 'epoch' if ckpt.get('by_epoch', True) else 'iter'
    name = str(ckpt.save_best).replace('/', '_')
    return (f'best checkpoint: best_{name}_{unit}_N.pth (highest {ckpt.save_best} so far, '
            'kept beside the last checkpoints; survives --resume)')


def set_early_stop(cfg, patience: int, min_delta: float = 0.0) -> str:
    """Stop after ``patience`` validations without a better ``coco/bbox_mAP`` (above the
    best by more than ``min_delta``; a tie is not better, as for the best checkpoint)."""
    if patience < 1:
        raise ConfigError(f'--early-stop {patience}: give the number of validations without '
                          'a better mAP to wait (1 or more)')
    if min_delta < 0:
        raise ConfigError(f'--early-stop-delta {min_delta}: give how much higher than the best '
                          'a mAP must be to count as better (0 or more, e.g. 0.001)')
    _needs_validation(cfg, '--early-stop')
    hooks = [h for h in (cfg.get('custom_hooks', None) or [])
             if h.get('type') not in ('EarlyStoppingHook', 'ResumableEarlyStoppingHook')]
    hooks.append(dict(type='ResumableEarlyStoppingHook', monitor=MONITOR, patience=patience,
                      min_delta=min_delta))
    cfg.custom_hooks = hooks
    interval = cfg.train_cfg.get('val_interval', 1)
    unit = 'iterations' if 'max_iters' in cfg.train_cfg else 'epochs'
    better = f'higher by more than {min_delta:g}' if min_delta else 'higher (a tie is not)'
    return (f'early stopping: after {patience} validations (every {interval} {unit}) without a '
            f'better {MONITOR} ({better})')


def apply_run_options(cfg, own_data: bool, ema: Optional[bool] = None,
                      save_best: Optional[bool] = None, early_stop: Optional[int] = None,
                      early_stop_delta: float = 0.0,
                      aug: str = 'recipe') -> List[str]:
    """The four switches; ``None`` = the default (on with ``own_data`` for EMA and the best
    checkpoint; ``--early-stop`` turns the best checkpoint on unless ``--no-save-best``)."""
    lines = []
    if ema is None:
        ema = own_data or any(h.get('type') in EMA_TYPES
                              for h in (cfg.get('custom_hooks', None) or []))
    lines.append(set_ema(cfg, ema))
    if save_best is None:
        save_best = own_data or early_stop is not None or bool(
            cfg.default_hooks.checkpoint.get('save_best', None))
    lines.append(set_save_best(cfg, save_best))
    if early_stop is not None:
        lines.append(set_early_stop(cfg, early_stop, early_stop_delta))
    lines.append(set_augmentation(cfg, aug))
    return lines


__all__ = ['apply_run_options', 'set_ema', 'set_save_best', 'set_early_stop', 'MONITOR']
