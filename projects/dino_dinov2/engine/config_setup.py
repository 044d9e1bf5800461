"""From command-line flags to a Runner config: what tools/train.py and tools/test.py share.

Each function takes an mmengine ``Config`` and changes it the way mmdet's own tools do,
so configs behave the same under this project's tools and under mmdet's.
"""
from __future__ import annotations

import copy
import os
import os.path as osp
import tempfile
from typing import Optional

from mmengine.config import Config
from mmengine.logging import print_log

from ..datasets.coco_summary import compare_classes, summarize_split
from ..datasets.errors import DatasetError
from ..datasets.layout import find_layout
from ..datasets.yolo import is_yolo_yaml
from ..evaluation import per_class_rows, per_class_table
from ..errors import ConfigError
from .checkpoint import CheckpointError, check_checkpoint_file, read_last_checkpoint
from .config_check import ConfigFileNotFoundError, check_cfg_options, check_values
from .config_text import TextCachedConfig


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
    if optim_type != 'OptimWrapper':
        raise ConfigError(f'--amp needs optim_wrapper.type OptimWrapper, got {optim_type!r}')
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
        latest = read_last_checkpoint(work_dir) if work_dir else None
        pointer = osp.join(work_dir, 'last_checkpoint') if work_dir else ''
        if latest is not None:
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


def print_metrics(metrics: dict) -> None:
    """One line per COCO bbox metric, as 'bbox mAP: 0.612', then the per-class table
    when the metric made one (:class:`PerClassCocoMetric`)."""
    for key, value in metrics.items():
        if key.startswith('coco/bbox'):
            name = key.split('/', 1)[1].replace('bbox_', 'bbox ')
            print(f'{name}: {value:.3f}' if isinstance(value, float) else f'{name}: {value}')
    rows = per_class_rows(metrics)
    if rows:
        print(per_class_table(rows))


def _innermost_dataset(loader_cfg):
    """The dataset dict a dataloader reads files with (inside wrappers such as
    ``RepeatDataset``/``ClassBalancedDataset``)."""
    ds = loader_cfg.dataset
    while isinstance(ds.get('dataset', None), dict):
        ds = ds.dataset
    return ds


def use_dataset(cfg: Config, data_root: Optional[str] = None,
                files: Optional[dict] = None, test: bool = False):
    """``--data-root DIR`` / ``--train-ann ... --val-img ...``: train on the user's data.

    Finds the splits (``datasets/layout.py``), reads each COCO file with the checks
    training uses, takes the classes (names, in category-id order) and their number
    from the training file, checks that the other splits name the same classes, and
    points every dataloader, evaluator and ``model.bbox_head.num_classes`` at them
    (DINO sizes its denoising label embedding from the head). ``test``: the test
    dataloader and evaluator read the ``test`` split when there is one (``tools/test.py``);
    otherwise the validation split.

    Returns ``(log line, training SplitSummary)``.
    """
    layout = find_layout(data_root, files)
    summaries = {name: summarize_split(name, split.ann_file, split.img_dir)
                 for name, split in layout.splits.items()}
    train = summaries['train']
    for other in summaries.values():
        if other is not train:
            problem = compare_classes(train, other)
            if problem:
                raise DatasetError(problem)
    if train.trainable_images == 0:
        raise DatasetError(f'{train.ann_file}: no image has a box to train on')
    classes = tuple(train.classes)
    test_split = 'test' if test and 'test' in summaries else 'val'
    if cfg.get('test_dataloader', None) is not None and \
            cfg.get('test_dataloader') is cfg.get('val_dataloader'):
        cfg.test_dataloader = copy.deepcopy(cfg.val_dataloader)
    for key, split in (('train_dataloader', 'train'), ('val_dataloader', 'val'),
                       ('test_dataloader', test_split)):
        if not cfg.get(key, None):
            continue
        ds = _innermost_dataset(cfg[key])
        ds.data_root = ''  # the paths below are whole
        ds.ann_file = osp.abspath(layout.splits[split].ann_file)
        ds.data_prefix = dict(img=osp.abspath(layout.splits[split].img_dir) + osp.sep)
        ds.metainfo = dict(classes=classes)
        if is_yolo_yaml(ds.ann_file):  # read into COCO form in memory, by split
            ds.type, ds.yolo_split = 'CheckedCocoDataset', split
    for key, split in (('val_evaluator', 'val'), ('test_evaluator', test_split)):
        evaluator = cfg.get(key, None)
        for metric in evaluator if isinstance(evaluator, list) else [evaluator]:
            if isinstance(metric, dict) and 'ann_file' in metric:
                metric.ann_file = osp.abspath(layout.splits[split].ann_file)
                if metric.get('type') == 'CocoMetric':  # + AP, AP50, boxes of each class
                    metric.type = 'PerClassCocoMetric'
                if is_yolo_yaml(metric.ann_file):
                    metric.type, metric.yolo_split = 'PerClassCocoMetric', split
    cfg.model.bbox_head.num_classes = len(classes)
    shown = ', '.join(classes[:20]) + (f', ... ({len(classes) - 20} more)'
                                       if len(classes) > 20 else '')
    line = (f'data: {layout.kind}' + (f' at {data_root}' if data_root else '') + '; '
            + '; '.join(s.describe() for s in summaries.values())
            + f'; {len(classes)} classes from {osp.basename(train.ann_file)}: {shown}')
    return line, train


SPLITS = ('train', 'val', 'test')


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


def add_dataset_arguments(parser) -> None:
    """The flags that point a config at the user's own COCO-format data (tools/train.py
    and tools/test.py)."""
    group = parser.add_argument_group(
        'your own dataset (COCO format; classes and their number come from the training '
        'file)')
    group.add_argument('--data-root', metavar='DIR',
                       help='COCO 2017 layout (annotations/instances_{train,val}*.json + '
                            'image folders) or one folder per split (train/, valid/ or '
                            'val/, test/, each with its _annotations.coco.json)')
    for split in SPLITS:
        group.add_argument(f'--{split}-ann', metavar='FILE',
                           help=f'the {split} COCO file (with --{split}-img)')
        group.add_argument(f'--{split}-img', metavar='DIR',
                           help=f'the folder of the {split} images')


def dataset_files(args) -> Optional[dict]:
    """``{split: (ann, img)}`` of the flags of :func:`add_dataset_arguments`, or None when
    none of them is given."""
    files = {s: (getattr(args, f'{s}_ann', None), getattr(args, f'{s}_img', None))
             for s in SPLITS}
    files = {s: v for s, v in files.items() if any(v)}
    if not files and getattr(args, 'data_root', None) is None:
        return None
    return files


def count_train_images(cfg: Config) -> int:
    """Training images a run uses: those with a box when the config filters empty images
    (``filter_cfg.filter_empty_gt``), else all (read from the config's training file)."""
    ds = _innermost_dataset(cfg.train_dataloader)
    ann = ds.ann_file if osp.isabs(ds.ann_file) else osp.join(ds.get('data_root', '') or '',
                                                              ds.ann_file)
    prefix = (ds.get('data_prefix', None) or {}).get('img', '')
    summary = summarize_split('train', ann, prefix)
    filtered = (ds.get('filter_cfg', None) or {}).get('filter_empty_gt', False)
    return summary.trainable_images if filtered else summary.images


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


def log_at_start(cfg, line: str) -> None:
    """Print ``line`` now and have the run's log say it (a :class:`RunInfoHook`)."""
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
