"""From command-line flags to a Runner config: what tools/train.py and tools/test.py share.

Each function takes an mmengine ``Config`` and changes it the way mmdet's own tools do,
so configs behave the same under this project's tools and under mmdet's.
"""
from __future__ import annotations

import os.path as osp
from typing import Optional

from mmengine.config import Config


def load_config(path: str, cfg_options: Optional[dict] = None) -> Config:
    """Read a config file and merge ``--cfg-options`` into it."""
    if not osp.isfile(path):
        raise FileNotFoundError(f'config file not found: {path}')
    cfg = Config.fromfile(path)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    return cfg


def set_work_dir(cfg: Config, work_dir: Optional[str], config_path: str) -> None:
    """``--work-dir`` > ``work_dir`` in the config > ``./work_dirs/<config name>``."""
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get('work_dir', None) is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(config_path))[0])


def enable_amp(cfg: Config, dtype: str = 'auto') -> None:
    """Mixed precision: bfloat16 where supported (Ampere+, CPU), else float16."""
    optim_type = cfg.optim_wrapper.get('type', 'OptimWrapper')
    if optim_type in ('AmpOptimWrapper', 'AutoAmpOptimWrapper'):
        print_log_once('AMP training is already enabled in your config.')
        return
    if optim_type != 'OptimWrapper':
        raise ValueError(f'--amp needs optim_wrapper.type OptimWrapper, got {optim_type!r}')
    cfg.optim_wrapper.type = 'AutoAmpOptimWrapper'
    cfg.optim_wrapper.loss_scale = 'dynamic'
    cfg.optim_wrapper.dtype = dtype


def set_resume(cfg: Config, resume: Optional[str]) -> None:
    """``--resume`` alone: the latest checkpoint of the work dir; ``--resume PATH``: that file."""
    if resume == 'auto':
        cfg.resume = True
        cfg.load_from = None
    elif resume is not None:
        if not osp.isfile(resume):
            raise FileNotFoundError(f'--resume: checkpoint not found: {resume}')
        cfg.resume = True
        cfg.load_from = resume


def print_log_once(msg: str) -> None:
    from mmengine.logging import print_log
    print_log(msg, logger='current')


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
