"""Your own data from the command line: ``--data-root DIR`` (COCO 2017 layout, one folder
per split, YOLO ``data.yaml``) and ``--{train,val,test}-{ann,img}``, written into a config.

What the data is (layout discovery, the YOLO reader, classes, the summary and the checks)
lives in ``datasets/``; this module points a config's dataloaders, evaluators and
head at it."""
from __future__ import annotations

import copy
import os.path as osp
from typing import Optional

from mmengine.config import Config

from ..datasets.coco_summary import compare_classes, summarize_split
from ..datasets.errors import DatasetError
from ..datasets.layout import find_layout
from ..datasets.yolo import is_yolo_yaml


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
    layout = find_layout(data_root, files, required=() if test else ('train', 'val'))
    summaries = {name: summarize_split(name, split.ann_file, split.img_dir)
                 for name, split in layout.splits.items()}
    # the classes: the training file's; for an evaluation without one, the evaluated split's
    test_split = next(s for s in ('test', 'val', 'train') if s in summaries) if test else 'val'
    train = summaries.get('train') or summaries[test_split]
    for other in summaries.values():
        if other is not train:
            problem = compare_classes(train, other)
            if problem:
                raise DatasetError(problem)
    if not test and train.trainable_images == 0:
        raise DatasetError(f'{train.ann_file}: no image has a box to train on')
    classes = tuple(train.classes)
    if cfg.get('test_dataloader', None) is not None and \
            cfg.get('test_dataloader') is cfg.get('val_dataloader'):
        cfg.test_dataloader = copy.deepcopy(cfg.val_dataloader)
    for key, split in (('train_dataloader', 'train'), ('val_dataloader', 'val'),
                       ('test_dataloader', test_split)):
        if not cfg.get(key, None) or split not in layout.splits:
            continue  # (an evaluation: the splits not given are not read)
        ds = _innermost_dataset(cfg[key])
        ds.data_root = ''  # the paths below are whole
        ds.ann_file = osp.abspath(layout.splits[split].ann_file)
        ds.data_prefix = dict(img=osp.abspath(layout.splits[split].img_dir) + osp.sep)
        ds.metainfo = dict(classes=classes)
        if is_yolo_yaml(ds.ann_file):  # read into COCO form in memory, by split
            ds.type, ds.yolo_split = 'CheckedCocoDataset', split
    for key, split in (('val_evaluator', 'val'), ('test_evaluator', test_split)):
        evaluator = cfg.get(key, None)
        if split not in layout.splits:
            continue
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
            + f'; {len(classes)} classes from {osp.basename(train.ann_file)}: {shown}'
            + (f'; evaluating the {test_split} split' if test else ''))
    return line, train


SPLITS = ('train', 'val', 'test')


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
