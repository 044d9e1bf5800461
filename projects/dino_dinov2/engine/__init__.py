from .amp import AutoAmpOptimWrapper, preferred_amp_dtype
from .config_setup import (enable_amp, enable_visualization, load_config, print_metrics,
                           set_resume, set_work_dir)
from .safe_checkpoint import register_safe_globals, safe_globals

register_safe_globals()

__all__ = [
    'AutoAmpOptimWrapper', 'preferred_amp_dtype', 'enable_amp', 'enable_visualization',
    'load_config', 'print_metrics',
    'set_resume', 'set_work_dir', 'register_safe_globals', 'safe_globals'
]
