"""What the tools do before a Runner exists: read a config and edit it from the flags,
check it, work out the schedule and the batch/lr, find the user's data, set up the
launcher, and the one exit path for errors. ``tools/*.py`` import this package, never
``engine/`` (what the Runner builds and calls).

Where a new flag goes: a config edit for the data -> ``own_data.py``; batch and lr ->
``lr_scaling.py``; iterations, epochs, validation cadence -> ``schedule.py``; EMA, best
checkpoint, early stop, augmentation presets -> ``run_options.py``; W&B -> ``wandb_setup.py``;
anything else a tool turns into a config setting -> ``config_setup.py``; a check that
rejects a bad key or value -> ``upstream/config_check.py``.
"""
# flake8: noqa: F401  (what the tools call, re-exported)
from ..checkpoint import (CheckpointError, atomic_write, check_checkpoint_file,
                          checkpoint_kind, describe_kind, install_checkpoint_loader,
                          load_local_checkpoint, original_state_of)
from ..engine.fine_tune import check_run_checkpoints
from ..upstream.loops import release_dataloader_workers
from ..upstream.runner import skip_checkpoint_load
from ..errors import ConfigError, UserError
from ..upstream.config_check import check_cfg_options, check_data_paths
from .config_setup import (add_common_arguments, build_target_model, check_config_device,
                           check_device, enable_amp, enable_fine_tuning, enable_preemption,
                           enable_visualization, load_config, log_at_start, print_metrics,
                           set_resume, set_work_dir, skip_backbone_download,
                           use_checked_loading)
from .error_exit import USER_ERRORS, exit_on_user_error
from ..upstream.launcher import (LaunchError, LaunchInfo, detect_launcher, expand_nodelist,
                       init_distributed, setup_launcher, slurm_dist_env)
from .lr_scaling import apply_batch_and_lr, log_batch_and_lr
from .own_data import add_dataset_arguments, count_train_images, dataset_files, use_dataset
from .run_options import apply_run_options, set_early_stop, set_ema, set_save_best
from .schedule import (describe_schedule, scale_schedule, schedule_for_run, set_epochs,
                       sets_schedule)
from .wandb_setup import enable_wandb
