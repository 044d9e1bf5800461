"""From command-line flags to a Runner config: what tools/train.py and tools/test.py share.

Each function takes an mmengine ``Config`` and changes it the way mmdet's own tools do,
so configs behave the same under this project's tools and under mmdet's.
"""
from __future__ import annotations

import os
import os.path as osp
import tempfile
from typing import Optional

from mmengine.config import Config
from mmengine.dist import get_rank, is_distributed
from mmengine.logging import print_log

from ..checkpoint import CheckpointError, check_checkpoint_file, read_last_checkpoint
from ..errors import ConfigError
from ..evaluation import per_class_rows, per_class_table
from ..upstream.config_check import ConfigFileNotFoundError, check_cfg_options, check_values
from ..upstream.config_text import TextCachedConfig
from .own_data import add_dataset_arguments


def load_config(path: str, cfg_options: Optional[dict] = None) -> Config:
    """Read a config file and merge ``--cfg-options`` into it.

    Each option is checked first: an unknown key or a wrong type is a ``ConfigError``
    naming the key (mmengine's merge would add any key silently; see config_check.py);
    then every numeric setting of the result against its range (``check_values``).
    The result formats its text once per content (``TextCachedConfig``).
    """
    if not osp.isfile(path):
        raise ConfigFileNotFoundError(f'config file not found: {path}')
    cfg = TextCachedConfig.of(Config.fromfile(path))
    if cfg_options:
        check_cfg_options(cfg, cfg_options, source=path)
        cfg.merge_from_dict(cfg_options)
    check_values(cfg, cfg_options, source=path)
    for key in ('train_dataloader', 'val_dataloader', 'test_dataloader'):
        loader = cfg.get(key, None)
        if loader and loader.get('num_workers', 0) == 0 and loader.get('persistent_workers'):
            # torch refuses the pair (a ValueError deep in the Runner): no workers to keep
            loader.persistent_workers = False
            print_log(f'{key}.num_workers=0: persistent_workers turned off (no worker '
                      'processes to keep)', logger='current')
    return cfg


def skip_backbone_download(cfg: Config) -> Optional[str]:
    """The backbone's pretrained weights off where a whole-detector checkpoint is loaded
    over them (tools/test.py, inference): no download, no file read for nothing, and a
    machine without internet evaluates. Returns the log line, or None if they were off."""
    backbone = cfg.model.get('backbone', None) or {}
    if not backbone.get('pretrained', None):
        return None
    backbone['pretrained'] = False
    return ('model.backbone.pretrained: not loaded (the checkpoint holds the backbone\'s '
            'weights)')


def set_work_dir(cfg: Config, work_dir: Optional[str], config_path: str) -> None:
    """``--work-dir`` > ``work_dir`` in the config > ``./work_dirs/<config name>``; the
    folder is created and must take files (a ``ConfigError`` now, not a traceback when
    the first log line or checkpoint is written)."""
    if work_dir is not None:
        cfg.work_dir = work_dir
    elif cfg.get('work_dir', None) is None:
        cfg.work_dir = osp.join('./work_dirs', osp.splitext(osp.basename(config_path))[0])
    if '://' in str(cfg.work_dir):
        return  # an object store: its backend reports its own errors
    try:
        os.makedirs(cfg.work_dir, exist_ok=True)
        with tempfile.TemporaryFile(dir=cfg.work_dir):
            pass
    except OSError as e:
        raise ConfigError(f'work dir {cfg.work_dir} cannot be created or written '
                          f'({e.strerror or e}): choose another with --work-dir') from None


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
    if optim_type not in ('OptimWrapper', 'LeanOptimWrapper'):
        raise ConfigError(f'--amp needs optim_wrapper.type OptimWrapper or LeanOptimWrapper, '
                          f'got {optim_type!r}')
    cfg.optim_wrapper.type = 'AutoAmpOptimWrapper'
    cfg.optim_wrapper.loss_scale = 'dynamic'
    cfg.optim_wrapper.dtype = dtype


def use_checked_loading(cfg: Config, key: str = 'test_dataloader') -> None:
    """The ``key`` loader's images read by ``CheckedLoadImageFromFile`` (one-line errors
    naming the file) where its pipeline has mmcv's ``LoadImageFromFile`` (what mmdet's
    ``DetInferencer`` needs in the config's test pipeline)."""
    for transform in cfg.get(key, {}).get('dataset', {}).get('pipeline', []):
        if transform.get('type') == 'LoadImageFromFile':
            transform['type'] = 'CheckedLoadImageFromFile'


def set_resume(cfg: Config, resume: Optional[str]) -> None:
    """``--resume`` alone (``'latest'``): the latest checkpoint of the work dir;
    ``--resume auto``: the same when there is one, else a new run (the first run of a job
    resubmitted with it); ``--resume PATH``: that file.

    The checkpoint is checked before anything is built: a missing or truncated file is
    a ``CheckpointError`` naming it, never a silent start from scratch; so is ``--resume``
    alone with nothing to resume (a typo in the work dir).
    """
    if resume in ('latest', 'auto'):
        cfg.resume = True
        cfg.load_from = None
        work_dir = cfg.get('work_dir', None)
        latest = read_last_checkpoint(work_dir) if work_dir else None
        pointer = osp.join(work_dir, 'last_checkpoint') if work_dir else ''
        if latest is None:
            cfg.resume = False
            if resume == 'latest':
                raise CheckpointError(
                    f'--resume: nothing to resume in {work_dir} (no last_checkpoint there): '
                    'check --work-dir; to start a new run, drop --resume; to resume when '
                    'there is something and start otherwise, --resume auto')
            log_at_start(cfg, f'--resume auto: no checkpoint in {work_dir} yet: a new run')
            return
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
        raise ConfigError('--show/--show-dir need default_hooks.visualization '
                          "(type='DetVisualizationHook') in the config")
    hooks.visualization.draw = True
    hooks.visualization.show = show
    hooks.visualization.wait_time = wait_time
    if show_dir:
        hooks.visualization.test_out_dir = show_dir


def add_common_arguments(parser, work_dir_help: str) -> None:
    """The flags tools/train.py and tools/test.py share, as mmdet's tools spell them:
    ``--work-dir``, ``--cfg-options``, ``--launcher``, ``--local_rank``/``--local-rank``
    (torchrun passes the dash form), and the own-dataset flags."""
    from mmengine.config import DictAction
    parser.add_argument('--work-dir', help=work_dir_help)
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, key=value (xxx=yyy format)')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi', 'auto'],
                        default='auto', help='job launcher; auto: torchrun -> pytorch, a '
                        'SLURM job step -> slurm, else one process (docs/launching.md)')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    add_dataset_arguments(parser)


def check_device(device: Optional[str], flag: str = '--device') -> None:
    """A GPU asked for where there is none is a ``ConfigError``, not a CUDA traceback."""
    if not device or not str(device).startswith('cuda'):
        return
    import torch
    if not torch.cuda.is_available():
        raise ConfigError(f'{flag} {device}: no GPU is visible here '
                          '(torch.cuda.is_available() is False); use cpu')
    index = str(device).partition(':')[2]
    if index and (not index.isdigit() or int(index) >= torch.cuda.device_count()):
        raise ConfigError(f'{flag} {device}: this machine has {torch.cuda.device_count()} '
                          f'GPU(s): cuda:0 .. cuda:{torch.cuda.device_count() - 1}')


def check_config_device(cfg: Config) -> None:
    """Config settings that need a GPU, on a machine without one."""
    import torch
    if torch.cuda.is_available():
        return
    if cfg.get('optim_wrapper', {}).get('type') == 'AmpOptimWrapper':
        raise ConfigError("optim_wrapper.type='AmpOptimWrapper' needs a GPU and none is "
                          "visible here; use --amp instead (AutoAmpOptimWrapper: bfloat16 "
                          'on the CPU)')


def process_rank() -> int:
    """This process's rank in its job: mmengine's once the process group is up, the
    launcher's variables before."""
    if is_distributed():
        return get_rank()
    for key in ('RANK', 'SLURM_PROCID'):
        if os.environ.get(key, '').isdigit():
            return int(os.environ[key])
    return 0


def log_at_start(cfg, line: str) -> None:
    """Print ``line`` now (the first process of a job alone) and have the run's log say it
    (a :class:`RunInfoHook`)."""
    if process_rank() == 0:
        print(line, flush=True)
    hooks = list(cfg.get('custom_hooks', None) or [])
    for hook in hooks:
        if hook.get('type') == 'RunInfoHook':
            hook['lines'] = list(hook.get('lines', [])) + [line]
            break
    else:
        hooks.append(dict(type='RunInfoHook', lines=[line]))
    cfg.custom_hooks = hooks


def enable_preemption(cfg, **kwargs) -> None:
    """Add a :class:`PreemptionHook` to ``cfg.custom_hooks`` unless the config has one
    (``default_hooks.preemption`` in ``configs/_base_/default_runtime.py``)."""
    hooks = list(cfg.get('custom_hooks', None) or [])
    declared = [h for h in hooks] + list((cfg.get('default_hooks', None) or {}).values())
    if not any(h and h.get('type') == 'PreemptionHook' for h in declared):
        hooks.append(dict(type='PreemptionHook', **kwargs))
    cfg.custom_hooks = hooks


def print_metrics(metrics: dict) -> None:
    """One line per COCO bbox metric, as 'bbox mAP: 0.612', then the per-class table
    when the metric made one (:class:`PerClassCocoMetric`); by the first process of a
    job alone."""
    if process_rank() != 0:
        return
    for key, value in metrics.items():
        if key.startswith('coco/bbox'):
            name = key.split('/', 1)[1].replace('bbox_', 'bbox ')
            print(f'{name}: {value:.3f}' if isinstance(value, float) else f'{name}: {value}')
    rows = per_class_rows(metrics)
    if rows:
        print(per_class_table(rows))


def enable_fine_tuning(cfg, checkpoint: str) -> None:
    """``--load-from CKPT``: a :class:`FineTuneLoadHook` instead of mmengine's non-strict
    ``load_from``."""
    cfg.load_from = None
    hooks = [h for h in (cfg.get('custom_hooks', None) or [])
             if h.get('type') != 'FineTuneLoadHook']
    cfg.custom_hooks = hooks + [dict(type='FineTuneLoadHook', checkpoint=checkpoint)]


def build_target_model(cfg):
    """This project's detector of ``cfg`` with its backbone's pretrained weights off
    (the converted checkpoint holds them): its state dict is the conversion's target."""
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules

    import projects.dino_dinov2  # noqa: F401  (registers the modules)
    register_all_modules(init_default_scope=True)
    skip_backbone_download(cfg)
    return MODELS.build(cfg.model)
