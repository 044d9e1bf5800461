"""The batch and lr arithmetic of ``--batch-size``/``--lr``/``--auto-scale-lr``
(``cli/lr_scaling.py`` writes them into a config) and of :class:`BatchLrLoggerHook`
(which logs what the optimizer holds): the scaling rules, :class:`BatchLr`, the batch
size of a built dataloader."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

from ..errors import ConfigError

SCALING_RULES = ('linear', 'sqrt')
DEFAULT_BASE_BATCH = 16


def lr_scale_factor(total_batch: int, base_batch: int, rule: Optional[str]) -> float:
    """lr multiplier for ``total_batch`` against ``base_batch``: ratio, sqrt(ratio) or 1."""
    if total_batch <= 0 or base_batch <= 0:
        raise ConfigError(f'batch sizes must be positive, got total {total_batch} and base '
                          f'{base_batch}')
    if rule is None:
        return 1.0
    if rule not in SCALING_RULES:
        raise ConfigError(f'--auto-scale-lr {rule!r}: choose one of {", ".join(SCALING_RULES)}')
    ratio = total_batch / base_batch
    return ratio if rule == 'linear' else math.sqrt(ratio)


@dataclass
class BatchLr:
    """The batch and lr a training will use, and how they were reached."""
    batch_per_process: int
    world_size: int
    base_batch: int
    base_lr: float
    rule: Optional[str] = None

    @property
    def total_batch(self) -> int:
        return self.batch_per_process * self.world_size

    @property
    def factor(self) -> float:
        return lr_scale_factor(self.total_batch, self.base_batch, self.rule)

    @property
    def lr(self) -> float:
        return self.base_lr * self.factor

    def describe(self) -> str:
        """One line: 'total batch 32 (16 per process x 2 processes); lr 1.000e-04 x ...'."""
        batch = (f'effective total batch {self.total_batch} ({self.batch_per_process} per '
                 f'process x {self.world_size} process{"es" if self.world_size > 1 else ""})')
        ratio = f'{self.total_batch}/{self.base_batch}'
        if self.rule == 'linear':
            rule = f' x {ratio} (linear scaling, base batch {self.base_batch})'
        elif self.rule == 'sqrt':
            rule = f' x sqrt({ratio}) (sqrt scaling, base batch {self.base_batch})'
        else:
            rule = ' (not scaled)'
        if math.isnan(self.base_lr):
            return batch
        return f'{batch}; lr {self.base_lr:.3e}{rule} = {self.lr:.3e}'


def loader_batch_size(dataloader) -> int:
    """Images per batch of a built DataLoader.

    ``DataLoader.batch_size`` is None when a ``batch_sampler`` is set (mmdet's
    ``AspectRatioBatchSampler`` in the recipe): the batch sampler holds it then.
    """
    batch = getattr(dataloader, 'batch_size', None)
    if batch is None:
        batch = getattr(getattr(dataloader, 'batch_sampler', None), 'batch_size', None)
    if batch is None:
        raise ValueError(f'cannot tell the batch size of {type(dataloader).__name__}: '
                         'neither it nor its batch_sampler has a batch_size')
    return int(batch)
