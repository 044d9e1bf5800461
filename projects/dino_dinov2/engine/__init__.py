"""What the Runner builds and calls: hooks, the optimizer constructor and wrappers, the batch
and lr arithmetic, fine-tune loading (registered in mmengine's registries).

The tools do not import this package: what runs before a Runner exists (configs from
flags, checks, schedules, the exit path) is ``cli/``. Workarounds for mmengine itself
(atomic checkpoints, resumable loop, early stopping, AMP on the CPU, W&B) are
``upstream/``.
"""
# flake8: noqa: F401  (re-exports)
from .batch_lr import BatchLr, lr_scale_factor
from .fine_tune import (check_fine_tuning, check_run_checkpoints, class_dependent_keys,
                        load_for_fine_tuning)
from .hooks import (PREEMPTED_EXIT_CODE, BatchLrLoggerHook, DeferredRuntimeInfoHook,
                    DetEMAHook, FineTuneLoadHook, NanGuardHook, NonFiniteLossError,
                    PreemptionHook, RunInfoHook)
from .lean_optim import LeanOptimWrapperConstructor
from .optim_wrapper import AutoAmpOptimWrapper, LeanOptimWrapper
