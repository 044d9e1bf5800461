"""From command-line flags to a Runner config: what tools/train.py and tools/test.py share.

Each function takes an mmengine ``Config`` and changes it the way mmdet's own tools do,
so configs behave the same under this project's tools and under mmdet's.
"""
from __future__ import annotations

import os.path as osp
from typing import Optional

from mmengine.config import Config
from mmengine.logging import print_log

from .checked_checkpoint import CheckpointError, check_checkpoint_file
from .config_check import ConfigFileNotFoundError, check_cfg_options


def load_config(path: str, cfg_options: Optional[dict] = None) -> Config:
    """Read a config file and merge ``--cfg-options`` into it.

    Each option is checked first: an unknown key or a wrong type is a ``ConfigError``
    naming the key (mmengine's merge would add any key silently; see config_check.py).
    """
    if not osp.isfile(path):
        raise ConfigFileNotFoundError(f'config file not found: {path}')
    cfg = Config.fromfile(path)
    if cfg_options:
        check_cfg_options(cfg, cfg_options, source=path)
        cfg.merge_from_dict(cfg_options)
    return cfg


def set_work_dir(cfg: Config, work_dir: Optional[str], config_path: str) -> None:
    """``--work-dir`` > ``work_dir`` in the config > ``./work_dirs/<config name>``."""
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get('work_dir', None) is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(config_path))[0])


def enable_amp(cfg: Config, dtype: Optional[str] = None) -> None:
    """Mixed precision: bfloat16 where supported (Ampere+, CPU), else float16.

    ``dtype`` None: the config's top-level ``amp_dtype`` if it has one (the
    original-equivalent configs say ``'float16'``: the original's autocast with a
    GradScaler), else ``'auto'``.
    """
    if dtype is None:
        dtype = cfg.get('amp_dtype', None) or 'auto'
    optim_type = cfg.optim_wrapper.get('type', 'OptimWrapper')
    if optim_type in ('AmpOptimWrapper', 'AutoAmpOptimWrapper'):
        print_log('AMP training is already enabled in your config.', logger='current')
        return
    if optim_type != 'OptimWrapper':
        raise ValueError(f'--amp needs optim_wrapper.type OptimWrapper, got {optim_type!r}')
    cfg.optim_wrapper.type = 'AutoAmpOptimWrapper'
    cfg.optim_wrapper.loss_scale = 'dynamic'
    cfg.optim_wrapper.dtype = dtype


def set_resume(cfg: Config, resume: Optional[str]) -> None:
    """``--resume`` alone: the latest checkpoint of the work dir; ``--resume PATH``: that file.

    The checkpoint is checked before anything is built: a missing or truncated file is
    a ``CheckpointError`` naming it, never a silent start from scratch. ``--resume``
    alone in a work dir without a ``last_checkpoint`` starts from scratch (first run of
    a job that is resubmitted with ``--resume``).
    """
    if resume == 'auto':
        cfg.resume = True
        cfg.load_from = None
        work_dir = cfg.get('work_dir', None)
        pointer = osp.join(work_dir, 'last_checkpoint') if work_dir else ''
        if pointer and osp.isfile(pointer):
            with open(pointer) as f:
                latest = f.read().strip()
            if not latest:
                raise CheckpointError(f'{pointer} is empty: pass the checkpoint to resume '
                                      'from, --resume PATH')
            try:
                check_checkpoint_file(latest)
            except CheckpointError as e:
                raise type(e)(f'--resume: {pointer} names a bad checkpoint: {e}') from None
    elif resume is not None:
        try:
            check_checkpoint_file(resume)
        except CheckpointError as e:
            raise type(e)(f'--resume: {e}') from None
        cfg.resume = True
        cfg.load_from = resume



def enable_visualization(cfg: Config, show: bool, show_dir: Optional[str],
                         wait_time: float = 2) -> None:
    """``--show``/``--show-dir``: turn on mmdet's DetVisualizationHook drawing."""
    hooks = cfg.default_hooks
    if 'visualization' not in hooks:
        raise KeyError('--show/--show-dir need default_hooks.visualization '
                       "(type='DetVisualizationHook') in the config")
    hooks.visualization.draw = True
    hooks.visualization.show = show
    hooks.visualization.wait_time = wait_time
    if show_dir:
        hooks.visualization.test_out_dir = show_dir


def print_metrics(metrics: dict) -> None:
    """One line per COCO bbox metric, as 'bbox mAP: 0.612'."""
    for key, value in metrics.items():
        if key.startswith('coco/bbox'):
            name = key.split('/', 1)[1].replace('bbox_', 'bbox ')
            print(f'{name}: {value:.3f}' if isinstance(value, float) else f'{name}: {value}')
