"""What the Runner builds and calls: hooks, loops, the AMP optimizer wrapper, the optimizer
constructor, the W&B backend, fine-tune loading (registered in mmengine's registries).

The tools do not import this package: what runs before a Runner exists (configs from
flags, checks, schedules, the launcher, the exit path) is ``cli/``.
"""
from .amp import AutoAmpOptimWrapper, preferred_amp_dtype
from .batch_lr import BatchLr, lr_scale_factor
from .fine_tune import (check_fine_tuning, check_run_checkpoints, class_dependent_keys,
                        load_for_fine_tuning)
from .hooks import (PREEMPTED_EXIT_CODE, AtomicCheckpointHook, BatchLrLoggerHook,
                    CheckpointLoaderHook, DeferredRuntimeInfoHook, DetEMAHook,
                    FineTuneLoadHook, NanGuardHook, NonFiniteLossError, PreemptionHook,
                    ResumableEarlyStoppingHook, RunInfoHook)
from .lean_optim import LeanOptimWrapperConstructor
from .loops import ResumableIterBasedTrainLoop, SkipFirstBatches, release_dataloader_workers
from .wandb_backend import SafeWandbVisBackend

__all__ = [
    'AutoAmpOptimWrapper', 'preferred_amp_dtype', 'BatchLr', 'lr_scale_factor',
    'check_fine_tuning', 'check_run_checkpoints', 'class_dependent_keys',
    'load_for_fine_tuning', 'PREEMPTED_EXIT_CODE', 'AtomicCheckpointHook',
    'BatchLrLoggerHook', 'CheckpointLoaderHook', 'DeferredRuntimeInfoHook', 'DetEMAHook',
    'FineTuneLoadHook', 'NanGuardHook', 'NonFiniteLossError', 'PreemptionHook',
    'ResumableEarlyStoppingHook', 'RunInfoHook', 'LeanOptimWrapperConstructor',
    'ResumableIterBasedTrainLoop', 'SkipFirstBatches', 'release_dataloader_workers',
    'SafeWandbVisBackend'
]
