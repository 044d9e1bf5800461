"""Where a user's COCO-format dataset keeps its splits (the tools' ``--data-root``).

Two layouts are recognised, the ones COCO itself and labelling tools export:

* **COCO 2017**: ``annotations/instances_train*.json`` and ``instances_val*.json`` (and
  ``instances_test*.json`` if present), images in the folder named like the file's suffix
  (``train2017/`` for ``instances_train2017.json``) or in ``train/``, ``val/``;
* **one folder per split** (Roboflow, CVAT): ``train/``, ``valid/`` or ``val/``, and
  ``test/``, each with its COCO file (``_annotations.coco.json``, or the one ``.json``
  there) beside its images.

* **YOLO** (Ultralytics, Roboflow): a ``data.yaml`` (or ``data.yml``) in the folder, or
  ``--data-root`` naming the yaml itself; its ``names`` are the classes and its ``train``,
  ``val``, ``test`` keys the image folders (``datasets/yolo.py``), read into COCO form in
  memory. A split's ``ann_file`` is then the yaml, its ``img_dir`` the split's folder.

``--train-ann FILE --train-img DIR`` (and ``--val-*``, ``--test-*``) name the files of
any other layout, or replace what was found under ``--data-root``.
"""
from __future__ import annotations

import glob
import os.path as osp
from dataclasses import dataclass, field
from typing import Sequence, Dict, Optional

from .errors import DatasetError
from .yolo import find_data_yaml, is_yolo_yaml, read_data_yaml

SPLIT_FOLDERS = {'train': ('train', ), 'val': ('valid', 'val'), 'test': ('test', )}
ROBOFLOW_FILE = '_annotations.coco.json'


@dataclass
class Split:
    name: str  # 'train', 'val' or 'test'
    ann_file: str
    img_dir: str


@dataclass
class DataLayout:
    kind: str  # 'COCO 2017 layout', 'one folder per split', 'YOLO data.yaml', 'files given'
    root: Optional[str]
    splits: Dict[str, Split] = field(default_factory=dict)


def _coco2017_split(root: str, split: str) -> Optional[Split]:
    found = sorted(glob.glob(osp.join(root, 'annotations', f'instances_{split}*.json')))
    if not found:
        return None
    if len(found) > 1:
        names = ', '.join(osp.basename(f) for f in found)
        raise DatasetError(f'{root}: several {split} annotation files ({names}); name one '
                           f'with --{split}-ann FILE --{split}-img DIR')
    stem = osp.splitext(osp.basename(found[0]))[0][len('instances_'):]  # 'train2017'
    for folder in dict.fromkeys((stem, split, osp.join('images', stem),
                                 osp.join('images', split))):
        if osp.isdir(osp.join(root, folder)):
            return Split(split, found[0], osp.join(root, folder))
    raise DatasetError(f'{root}: no image folder for {osp.basename(found[0])} (looked for '
                       f'{stem}/, {split}/, images/{stem}/); name it with --{split}-img DIR')


def _folder_split(root: str, split: str) -> Optional[Split]:
    for folder in SPLIT_FOLDERS[split]:
        path = osp.join(root, folder)
        if not osp.isdir(path):
            continue
        if osp.isfile(osp.join(path, ROBOFLOW_FILE)):
            return Split(split, osp.join(path, ROBOFLOW_FILE), path)
        found = sorted(glob.glob(osp.join(path, '*.json')))
        if len(found) == 1:
            return Split(split, found[0], path)
        if found:
            names = ', '.join(osp.basename(f) for f in found)
            raise DatasetError(f'{path}: several COCO files ({names}); name one with '
                               f'--{split}-ann FILE --{split}-img DIR')
        raise DatasetError(f'{path}: no COCO annotation file ({ROBOFLOW_FILE} or one '
                           '.json) in this split folder')
    return None


def find_layout(data_root: Optional[str] = None, files: Optional[Dict[str, tuple]] = None,
                required: Sequence[str] = ('train', 'val')) -> DataLayout:
    """The splits of ``data_root`` (the ``required`` ones, train and val for training;
    test optional).

    ``files``: ``{split: (ann_file, img_dir)}`` given on the command line; they replace
    what was found (or are all there is, without ``data_root``). ``required=()`` (an
    evaluation): any split found or given will do, one at least.
    """
    files = {k: v for k, v in (files or {}).items() if v and any(v)}
    for split, (ann, img) in files.items():
        if not ann or not img:
            raise DatasetError(f'--{split}-ann and --{split}-img go together: give both')
        if not osp.isfile(ann):
            raise DatasetError(f'--{split}-ann: annotation file not found: {ann}')
        if not osp.isdir(img):
            raise DatasetError(f'--{split}-img: image folder not found: {img}')
    layout = DataLayout('files given', data_root)
    if data_root is not None:
        yaml_path = data_root if is_yolo_yaml(data_root) and osp.isfile(data_root) else None
        if yaml_path is None and not osp.isdir(data_root):
            raise DatasetError(f'--data-root: folder not found: {data_root}')
        if yaml_path is None and not osp.isdir(osp.join(data_root, 'annotations')):
            yaml_path = find_data_yaml(data_root)
        if yaml_path is not None:
            layout.kind = 'YOLO data.yaml'
            _, folders = read_data_yaml(yaml_path)
            found = {s: Split(s, osp.abspath(yaml_path), f[0]) for s, f in folders.items()}
        elif osp.isdir(osp.join(data_root, 'annotations')):
            layout.kind = 'COCO 2017 layout'
            found = {s: _coco2017_split(data_root, s) for s in ('train', 'val', 'test')}
        else:
            layout.kind = 'one folder per split'
            found = {s: _folder_split(data_root, s) for s in ('train', 'val', 'test')}
        layout.splits = {s: sp for s, sp in found.items() if sp is not None}
    for split, (ann, img) in files.items():
        layout.splits[split] = Split(split, ann, img)
    if not required and not layout.splits:
        raise DatasetError((f'{data_root}: no split found' if data_root else 'no split given')
                           + '; name the one to evaluate with --test-ann FILE --test-img DIR')
    for split in required:
        if split not in layout.splits:
            where = (f'{data_root}: no {split} split found (expected '
                     f'annotations/instances_{split}*.json for the COCO 2017 layout, '
                     f'{"/ or ".join(SPLIT_FOLDERS[split])}/{ROBOFLOW_FILE} for one folder '
                     f'per split, or a {split}: key in data.yaml)') if data_root else \
                f'no {split} split given'
            raise DatasetError(f'{where}; or name it with --{split}-ann FILE '
                               f'--{split}-img DIR')
    return layout


__all__ = ['Split', 'DataLayout', 'find_layout', 'SPLIT_FOLDERS', 'ROBOFLOW_FILE']
