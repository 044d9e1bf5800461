from .amp import AutoAmpOptimWrapper, preferred_amp_dtype
from .checkpoint import (AtomicLocalBackend, CheckpointError, atomic_write,
                         check_checkpoint_file, check_checkpoint_fits, check_checkpoint_for,
                         checkpoint_kind, load_local_checkpoint, read_last_checkpoint,
                         register_checked_loader, register_safe_globals, safe_globals,
                         write_last_checkpoint)
from .config_check import ConfigError, check_cfg_options, check_data_paths
from .config_setup import (enable_amp, enable_preemption, enable_visualization, load_config,
                           log_at_start, print_metrics, set_resume, set_work_dir, use_dataset,
                           check_device, check_config_device, skip_backbone_download,
                           add_dataset_arguments, dataset_files, count_train_images)
from .fine_tune import (check_fine_tuning, check_run_checkpoints, class_dependent_keys,
                        enable_fine_tuning, load_for_fine_tuning)
from .hooks import (PREEMPTED_EXIT_CODE, AtomicCheckpointHook, BatchLrLoggerHook,
                    FineTuneLoadHook, NanGuardHook, NonFiniteLossError, PreemptionHook,
                    RunInfoHook)
from .lean_optim import LeanOptimWrapperConstructor
from .launcher import (LaunchError, LaunchInfo, detect_launcher, expand_nodelist, init_distributed,
                       setup_launcher, slurm_dist_env)
from .loops import ResumableIterBasedTrainLoop, SkipFirstBatches, release_dataloader_workers
from .lr_scaling import (BatchLr, apply_batch_and_lr, loader_batch_size, log_batch_and_lr,
                         lr_scale_factor)
from .run_options import apply_run_options, set_early_stop, set_ema, set_save_best
from .schedule import (describe_schedule, scale_schedule, schedule_for_run, set_epochs,
                       sets_schedule)
from .user_errors import USER_ERRORS, exit_on_user_error
from .wandb_setup import SafeWandbVisBackend, enable_wandb

register_safe_globals()
register_checked_loader()

__all__ = [
    'AutoAmpOptimWrapper', 'preferred_amp_dtype', 'enable_amp', 'enable_visualization',
    'load_config', 'print_metrics', 'skip_backbone_download',
    'set_resume', 'set_work_dir', 'register_safe_globals', 'safe_globals',
    'LaunchInfo', 'detect_launcher', 'expand_nodelist', 'init_distributed', 'setup_launcher',
    'slurm_dist_env', 'BatchLr', 'BatchLrLoggerHook', 'apply_batch_and_lr', 'log_batch_and_lr',
    'lr_scale_factor', 'loader_batch_size', 'ResumableIterBasedTrainLoop', 'SkipFirstBatches',
    'release_dataloader_workers',
    'describe_schedule', 'scale_schedule', 'sets_schedule', 'set_epochs', 'schedule_for_run',
    'use_dataset',
    'add_dataset_arguments', 'dataset_files', 'count_train_images',
    'FineTuneLoadHook', 'check_fine_tuning', 'check_run_checkpoints', 'class_dependent_keys',
    'enable_fine_tuning', 'load_for_fine_tuning',
    'RunInfoHook', 'log_at_start',
    'PREEMPTED_EXIT_CODE', 'PreemptionHook', 'enable_preemption', 'SafeWandbVisBackend',
    'enable_wandb', 'AtomicCheckpointHook', 'AtomicLocalBackend', 'atomic_write',
    'write_last_checkpoint', 'CheckpointError', 'check_checkpoint_file',
    'load_local_checkpoint', 'register_checked_loader', 'ConfigError', 'check_cfg_options',
    'check_data_paths', 'NanGuardHook', 'NonFiniteLossError', 'USER_ERRORS',
    'exit_on_user_error', 'check_checkpoint_fits', 'check_checkpoint_for', 'checkpoint_kind',
    'read_last_checkpoint',
    'apply_run_options', 'set_ema', 'set_save_best', 'set_early_stop',
    'LaunchError', 'check_device', 'check_config_device', 'LeanOptimWrapperConstructor'
]
