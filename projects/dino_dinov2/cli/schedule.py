"""The training schedule of a config: what it is, and kept in images seen at another batch.

The recipe's schedule is the original's, in iterations at a total batch of 16
(``auto_scale_lr.base_batch_size``): 90,000 iterations with the lr drop at 82,500,
validation and checkpoints every 2,500. Trained at another total batch (``--batch-size``,
another GPU count), :func:`scale_schedule` rescales every iteration count by
``base batch / total batch`` so the run sees the same number of images, as detectron2 does
with ``SOLVER.REFERENCE_WORLD_SIZE`` (``DefaultTrainer.auto_scale_workers``: max iter,
steps, warm-up, evaluation and checkpoint periods). The lr is a separate choice
(``--auto-scale-lr``). An epoch-based schedule counts passes over the data, which do not
depend on the batch: it is left as it is.

A schedule a user sets on the command line (any ``--cfg-options`` key under
``train_cfg``, ``param_scheduler`` or ``default_hooks.checkpoint``) is taken as written.

On a user's own dataset (``--data-root``, ``--epochs N``) :func:`set_epochs` makes the
schedule N passes over it, whatever loop the config uses; without ``--epochs`` the
config's nominal ``max_epochs`` (12 for the 12ep recipes, whose 90,000 iterations are 12
passes of 7,500 over COCO).
"""
from __future__ import annotations

import math
from typing import Optional

from ..errors import ConfigError

# --cfg-options keys (prefixes) that make the schedule the user's own
SCHEDULE_KEYS = ('train_cfg', 'param_scheduler', 'default_hooks.checkpoint')
# iteration counts of mmengine's parameter schedulers (by_epoch=False)
_SCHEDULER_COUNTS = ('begin', 'end', 'milestones', 'step_size', 'T_max')


def is_iter_based(cfg) -> bool:
    """Whether the config's training loop counts iterations (``max_iters``)."""
    return 'max_iters' in (cfg.get('train_cfg', None) or {})


def sets_schedule(cfg_options: Optional[dict]) -> bool:
    """Whether ``--cfg-options`` set any part of the schedule."""
    return any(str(key) == prefix or str(key).startswith(prefix + '.')
               for key in (cfg_options or {}) for prefix in SCHEDULE_KEYS)


def _lr_steps(cfg) -> list:
    steps = []
    for sched in _schedulers(cfg):
        for m in sched.get('milestones', None) or []:
            steps.append(m)
    return sorted(steps)


def _schedulers(cfg) -> list:
    scheds = cfg.get('param_scheduler', None) or []
    return [scheds] if isinstance(scheds, dict) else list(scheds)


def describe_schedule(cfg) -> str:
    """One line: '90000 iterations, lr steps at [82500], validation every 2500 iterations,
    checkpoints every 2500 iterations' (or the same in epochs)."""
    train_cfg = cfg.get('train_cfg', None) or {}
    unit = 'iterations' if is_iter_based(cfg) else 'epochs'
    length = train_cfg.get('max_iters' if unit == 'iterations' else 'max_epochs', '?')
    parts = [f'{length} {unit}']
    steps = _lr_steps(cfg)
    if steps:
        parts.append(f'lr steps at {steps}')
    if cfg.get('val_cfg', None) and train_cfg.get('val_interval', None):
        parts.append(f'validation every {train_cfg.val_interval} {unit}')
    ckpt = (cfg.get('default_hooks', None) or {}).get('checkpoint', None)
    if ckpt:
        ckpt_unit = 'epochs' if ckpt.get('by_epoch', True) else 'iterations'
        parts.append(f'checkpoints every {ckpt.get("interval", -1)} {ckpt_unit}')
    return ', '.join(parts)


def _scaled(value, factor: float, at_least: int = 1):
    return max(at_least, int(round(value * factor)))


def scale_schedule(cfg, total_batch: int, base_batch: int, fixed: bool = False) -> str:
    """Rescale an iteration schedule written for ``base_batch`` to ``total_batch``.

    Changes ``cfg`` in place (max iterations, validation begin/interval, the parameter
    schedulers' iteration counts, the checkpoint interval) and returns the log line that
    says what the schedule is and why. ``fixed``: the user set the schedule; keep it.
    """
    if total_batch <= 0 or base_batch <= 0:
        raise ConfigError(f'batch sizes must be positive, got total {total_batch} and base '
                          f'{base_batch}')
    if not is_iter_based(cfg):
        return (f'schedule: {describe_schedule(cfg)} (epochs are passes over the data: '
                f'the same at any total batch)')
    if fixed:
        return (f'schedule: {describe_schedule(cfg)} as set by --cfg-options (taken as '
                f'written at total batch {total_batch}; the config\'s schedule is for '
                f'{base_batch})')
    if total_batch == base_batch:
        return (f'schedule: {describe_schedule(cfg)} at total batch {total_batch}, as the '
                'config gives it')
    factor = base_batch / total_batch
    train_cfg = cfg.train_cfg
    before = int(train_cfg.max_iters)
    train_cfg.max_iters = _scaled(before, factor)
    if 'val_interval' in train_cfg:
        train_cfg.val_interval = _scaled(train_cfg.val_interval, factor)
    if train_cfg.get('val_begin', 1) > 1:
        train_cfg.val_begin = _scaled(train_cfg.val_begin, factor)
    if train_cfg.get('dynamic_intervals', None):
        train_cfg.dynamic_intervals = [(_scaled(m, factor), _scaled(i, factor))
                                       for m, i in train_cfg.dynamic_intervals]
    for sched in _schedulers(cfg):
        if sched.get('by_epoch', True):
            continue
        for key in _SCHEDULER_COUNTS:
            value = sched.get(key, None)
            if isinstance(value, (list, tuple)):
                sched[key] = [_scaled(v, factor) for v in value]
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                if key == 'end' and value > before:  # "until the end" sentinels
                    continue
                sched[key] = _scaled(value, factor, at_least=0 if key == 'begin' else 1)
    ckpt = (cfg.get('default_hooks', None) or {}).get('checkpoint', None)
    if ckpt and not ckpt.get('by_epoch', True) and ckpt.get('interval', -1) > 0:
        ckpt.interval = _scaled(ckpt.interval, factor)
    return (f'schedule: {describe_schedule(cfg)} at total batch {total_batch}: the '
            f'config\'s {before} iterations at total batch {base_batch} rescaled by '
            f'{base_batch}/{total_batch} to see the same {before * base_batch} images '
            '(as detectron2\'s REFERENCE_WORLD_SIZE; the lr follows --auto-scale-lr)')


def set_epochs(cfg, epochs: float, images: int, total_batch: int) -> str:
    """Make the schedule ``epochs`` passes over a training set of ``images`` images.

    An epoch-based loop gets ``max_epochs=epochs``; an iteration-based one
    ``epochs x ceil(images / total_batch)`` iterations. Either way the lr steps stay at
    the same fraction of the schedule, and the run validates and saves a checkpoint at least
    once per epoch (every epoch for an epoch loop). Returns the log line.
    """
    if epochs <= 0:
        raise ConfigError(f'--epochs must be positive, got {epochs}')
    if images <= 0:
        raise ConfigError('the training set has no image with a box to train on')
    train_cfg = cfg.train_cfg
    if is_iter_based(cfg):
        per_epoch = math.ceil(images / total_batch)
        before = int(train_cfg.max_iters)
        length = max(1, int(round(epochs * per_epoch)))
        train_cfg.max_iters = length
        interval = min(int(train_cfg.get('val_interval', per_epoch)), per_epoch)
        train_cfg.val_interval = interval
        ckpt = (cfg.get('default_hooks', None) or {}).get('checkpoint', None)
        if ckpt and not ckpt.get('by_epoch', True):
            ckpt.interval = min(int(ckpt.get('interval', per_epoch)), per_epoch)
        unit = f' ({per_epoch} iterations per epoch at total batch {total_batch})'
    else:
        before = train_cfg.max_epochs
        length = max(1, int(round(epochs)))
        train_cfg.max_epochs = length
        if 'val_interval' in train_cfg:
            train_cfg.val_interval = 1
        ckpt = (cfg.get('default_hooks', None) or {}).get('checkpoint', None)
        if ckpt and ckpt.get('by_epoch', True):
            ckpt.interval = 1
        unit = f' (total batch {total_batch})'
    by_epoch = not is_iter_based(cfg)
    for sched in _schedulers(cfg):
        if bool(sched.get('by_epoch', True)) != by_epoch:
            continue
        for key in _SCHEDULER_COUNTS:
            value = sched.get(key, None)
            if isinstance(value, (list, tuple)):
                sched[key] = [max(1, int(round(v * length / before))) for v in value]
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                if key == 'end' and value > before:  # "until the end" sentinels
                    continue
                sched[key] = max(0 if key == 'begin' else 1,
                                 int(round(value * length / before)))
    return (f'schedule: {epochs:g} epochs over {images} training images{unit}: '
            f'{describe_schedule(cfg)}')


def schedule_for_run(cfg, batch_lr, epochs: Optional[float] = None, dataset=None,
                     user_schedule: bool = False) -> str:
    """The schedule ``tools/train.py`` trains with, set in ``cfg``; returns its log line.

    ``--epochs N``: N passes over the training set. ``--data-root`` (``dataset``, the
    training :class:`SplitSummary`) without ``--epochs``: the config's nominal
    ``max_epochs`` passes over it. Otherwise the config's schedule, rescaled to the total
    batch (:func:`scale_schedule`). A schedule set with ``--cfg-options`` is kept, and
    conflicts with ``--epochs``.
    """
    if epochs is not None and user_schedule:
        raise ConfigError('--epochs and --cfg-options train_cfg/param_scheduler/'
                          'default_hooks.checkpoint both set the schedule: give one of them')
    if epochs is None and dataset is not None and not user_schedule:
        epochs = cfg.get('max_epochs', None) or cfg.train_cfg.get('max_epochs', None)
        if epochs is None:
            raise ConfigError('this config has no max_epochs to train on a new dataset: '
                              'give --epochs N')
    if epochs is not None:
        if dataset is not None:
            images = dataset.trainable_images
        else:
            from .own_data import count_train_images
            images = count_train_images(cfg)
        return set_epochs(cfg, epochs, images, batch_lr.total_batch)
    return scale_schedule(cfg, batch_lr.total_batch, batch_lr.base_batch, fixed=user_schedule)
