"""The project's hooks, one module each (registered in mmengine's HOOKS on import)."""
# flake8: noqa: F401  (re-exports)
from .batch_lr_logger_hook import BatchLrLoggerHook
from .deferred_runtime_info_hook import DeferredRuntimeInfoHook
from .ema_hook import DetEMAHook
from .fine_tune_load_hook import FineTuneLoadHook
from .nan_guard_hook import NanGuardHook, NonFiniteLossCheck, NonFiniteLossError
from .preemption_hook import PREEMPTED_EXIT_CODE, PreemptionHook
from .run_info_hook import RunInfoHook
