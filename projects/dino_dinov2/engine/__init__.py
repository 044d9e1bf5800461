from .amp import AutoAmpOptimWrapper, preferred_amp_dtype
from .config_setup import (enable_amp, enable_visualization, load_config, print_metrics,
                           set_resume, set_work_dir)
from .launcher import (LaunchInfo, detect_launcher, expand_nodelist, init_distributed,
                       setup_launcher, slurm_dist_env)
from .lr_scaling import (BatchLr, BatchLrLoggerHook, apply_batch_and_lr, log_batch_and_lr,
                         lr_scale_factor)
from .preemption import PREEMPTED_EXIT_CODE, PreemptionHook, enable_preemption
from .safe_checkpoint import register_safe_globals, safe_globals
from .wandb_setup import SafeWandbVisBackend, enable_wandb

register_safe_globals()

__all__ = [
    'AutoAmpOptimWrapper', 'preferred_amp_dtype', 'enable_amp', 'enable_visualization',
    'load_config', 'print_metrics',
    'set_resume', 'set_work_dir', 'register_safe_globals', 'safe_globals',
    'LaunchInfo', 'detect_launcher', 'expand_nodelist', 'init_distributed', 'setup_launcher',
    'slurm_dist_env', 'BatchLr', 'BatchLrLoggerHook', 'apply_batch_and_lr', 'log_batch_and_lr',
    'lr_scale_factor',
    'PREEMPTED_EXIT_CODE', 'PreemptionHook', 'enable_preemption', 'SafeWandbVisBackend',
    'enable_wandb'
]
