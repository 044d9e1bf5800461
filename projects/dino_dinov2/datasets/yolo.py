"""YOLO datasets (Ultralytics and Roboflow exports) read into COCO form, in memory.

A YOLO export is a ``data.yaml`` (``names``, and the image folders of ``train``, ``val``,
``test``) with ``images/`` folders and ``labels/`` folders beside them: one ``.txt`` per
image, one line ``class cx cy w h`` per box, normalized to the image size; an image without
a label file has no boxes. :func:`read_data_yaml` resolves the split paths as Ultralytics
does (relative to the yaml's ``path:`` key, else to the yaml's folder; Roboflow's
``train: ../train/images`` tried with the ``../`` dropped when it does not exist there);
:func:`read_yolo_split` reads one split into a COCO dict (images with their sizes, boxes in
pixels ``[x, y, w, h]``, categories ``1..N`` named from ``names``), nothing written next to
the user's data.

A bad line is an error naming the file and line, or is skipped and counted, as the COCO
checks treat a broken file and a bad box: a line that is not 5 numbers is an error; a class
index not in ``names``, values outside 0..1 and an empty box are skipped and counted when
training reads the split (:func:`load_split`, :data:`SKIPPED`), errors with
``read_yolo_split(strict=True)``.
"""
from __future__ import annotations

import collections
import copy
import functools
import glob
import os
import os.path as osp
from typing import Collection, Dict, List, Optional, Tuple

from ..errors import first_line
from .errors import DatasetError

IMAGE_SUFFIXES = ('.jpg', '.jpeg', '.png', '.bmp', '.tif', '.tiff', '.webp')
SPLIT_KEYS = {'train': ('train', ), 'val': ('val', 'valid'), 'test': ('test', )}
YAML_NAMES = ('data.yaml', 'data.yml')
# what a training run skips (and counts) rather than stops on: a box, not the file, is bad
SKIPPED = ('class index not in names', 'values outside 0..1', 'empty box')


def is_yolo_yaml(path) -> bool:
    """Whether an annotation path names a YOLO data.yaml (not a COCO .json)."""
    return isinstance(path, str) and path.lower().endswith(('.yaml', '.yml'))


def find_data_yaml(folder: str) -> Optional[str]:
    """The ``data.yaml`` (or ``data.yml``) of a YOLO export folder, if there is one."""
    for name in YAML_NAMES:
        if osp.isfile(osp.join(folder, name)):
            return osp.join(folder, name)
    return None


def _names(value, yaml_path: str) -> List[str]:
    if isinstance(value, dict):
        try:
            keys = sorted(int(k) for k in value)
        except (TypeError, ValueError):
            raise DatasetError(f'{yaml_path}: names must map class indices to names, got '
                               f'keys {list(value)[:5]}') from None
        if keys != list(range(len(keys))):
            raise DatasetError(f'{yaml_path}: names must number the classes 0..N-1, got '
                               f'{keys[:10]}')
        return [str(value[k] if k in value else value[str(k)]) for k in keys]
    if isinstance(value, (list, tuple)) and value:
        return [str(v) for v in value]
    raise DatasetError(f'{yaml_path}: no class names (a "names:" list or index: name map)')


def read_data_yaml(yaml_path: str) -> Tuple[List[str], Dict[str, List[str]]]:
    """(class names, image folders per split found) of an Ultralytics/Roboflow data.yaml."""
    import yaml
    if not osp.isfile(yaml_path):
        raise DatasetError(f'{yaml_path}: no such file')
    try:
        with open(yaml_path) as f:
            data = yaml.safe_load(f)
    except yaml.YAMLError as e:
        raise DatasetError(f'{yaml_path}: not YAML ({first_line(e)})') from None
    if not isinstance(data, dict):
        raise DatasetError(f'{yaml_path}: not a YOLO data.yaml (a mapping with names and '
                           'train/val paths)')
    names = _names(data.get('names'), yaml_path)
    if 'nc' in data and int(data['nc']) != len(names):
        raise DatasetError(f'{yaml_path}: nc: {data["nc"]} but {len(names)} names')
    here = osp.dirname(osp.abspath(yaml_path))
    root = data.get('path')
    root = here if not root else (root if osp.isabs(str(root)) else
                                  osp.normpath(osp.join(here, str(root))))
    splits: Dict[str, List[str]] = {}
    for split, keys in SPLIT_KEYS.items():
        key = next((k for k in keys if data.get(k)), None)
        if key is None:
            continue
        entries = data[key] if isinstance(data[key], list) else [data[key]]
        folders = []
        for entry in entries:
            path = osp.normpath(osp.join(root, str(entry)))
            if not osp.exists(path) and str(entry).startswith('../'):
                path = osp.normpath(osp.join(root, str(entry)[3:]))
            if not osp.isdir(path):
                kind = (' (a .txt list of images is not read here: give the image folder)'
                        if str(entry).endswith('.txt') else '')
                raise DatasetError(f'{yaml_path}: {key}: {entry} is not a folder (looked at '
                                   f'{path}){kind}')
            folders.append(path)
        splits[split] = folders
    if 'train' not in splits:
        raise DatasetError(f'{yaml_path}: no train: folder')
    return names, splits


def label_path(image_path: str) -> str:
    """Ultralytics' rule: the last ``/images/`` of the path becomes ``/labels/``, the
    suffix ``.txt``."""
    head, sep, tail = image_path.rpartition(f'{osp.sep}images{osp.sep}')
    path = f'{head}{osp.sep}labels{osp.sep}{tail}' if sep else image_path
    return osp.splitext(path)[0] + '.txt'


def _image_size(path: str) -> Tuple[int, int]:
    from PIL import Image, UnidentifiedImageError
    try:
        with Image.open(path) as im:
            return im.size  # (width, height), from the header
    except (OSError, UnidentifiedImageError) as e:
        raise DatasetError(f'{path}: not an image ({e})') from None


def read_yolo_split(folders: List[str], names: List[str], strict: bool = True,
                    skip: Optional[Collection[str]] = None, examples: Optional[dict] = None
                    ) -> Tuple[dict, collections.Counter]:
    """A COCO dict of the images under ``folders`` (``file_name``: the image's absolute
    path) and their YOLO labels, and the counts of the lines skipped by kind of problem.

    ``strict=True`` stops on any bad line; ``strict=False`` skips them all; ``skip``: the
    kinds skipped (the others stop). ``examples`` (a dict) collects the first
    ``file:line`` of each kind skipped."""
    images, annotations = [], []
    skipped: collections.Counter = collections.Counter()
    if skip is None:
        skip = () if strict else None  # None: every kind
    found = [p for folder in folders
             for p in glob.glob(osp.join(folder, '**', '*'), recursive=True)]
    paths = sorted(p for p in found if p.lower().endswith(IMAGE_SUFFIXES))
    if not paths:
        raise DatasetError(f'{", ".join(folders)}: no images')
    for image_id, path in enumerate(paths, start=1):
        width, height = _image_size(path)
        images.append(dict(id=image_id, file_name=path, width=width, height=height))
        labels = label_path(path)
        if not osp.isfile(labels):
            continue  # no label file: an image without boxes
        with open(labels) as f:
            lines = f.read().splitlines()
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            problem, box = _parse(line, len(names))
            if problem:
                kind = problem.split(':')[0]
                if skip is not None and kind not in skip:
                    raise DatasetError(f'{labels}:{number}: {problem} (got "{line.strip()}")')
                skipped[kind] += 1
                if examples is not None:
                    examples.setdefault(kind, f'{labels}:{number}')
                continue
            c, cx, cy, w, h = box
            x1, y1 = _edge(cx - w / 2) * width, _edge(cy - h / 2) * height
            x2, y2 = _edge(cx + w / 2) * width, _edge(cy + h / 2) * height
            annotations.append(dict(
                id=len(annotations) + 1, image_id=image_id, category_id=int(c) + 1,
                bbox=[x1, y1, x2 - x1, y2 - y1], area=(x2 - x1) * (y2 - y1), iscrowd=0))
    categories = [dict(id=i + 1, name=n) for i, n in enumerate(names)]
    return dict(images=images, annotations=annotations, categories=categories), skipped


def _edge(v: float) -> float:
    """A box edge, with the rounding of the label file's 6 decimals (an edge 1e-6 past the
    border) put back on the border; a box really past it is left to the box checks."""
    return 0.0 if -1e-4 < v < 0 else 1.0 if 1 < v < 1 + 1e-4 else v


def _parse(line: str, num_classes: int) -> Tuple[Optional[str], Optional[tuple]]:
    parts = line.split()
    if len(parts) != 5:
        return f'5 numbers expected: class cx cy w h, got {len(parts)}', None
    try:
        values = [float(p) for p in parts]
    except ValueError:
        return 'not a number', None
    c = values[0]
    if c != int(c) or not 0 <= c < num_classes:
        return f'class index not in names: {parts[0]} (names has {num_classes})', None
    if not all(0.0 <= v <= 1.0 for v in values[1:]):
        return 'values outside 0..1: cx cy w h are fractions of the image size', None
    if values[3] <= 0 or values[4] <= 0:
        return 'empty box: w and h must be above 0', None
    return None, tuple(values)


@functools.lru_cache(maxsize=16)
def _load_split(yaml_path: str, split: str, stamp: tuple):
    names, splits = read_data_yaml(yaml_path)
    if split not in splits:
        keys = '/'.join(SPLIT_KEYS.get(split, (split, )))
        raise DatasetError(f'{yaml_path}: no {keys}: folder for the {split} split')
    examples: dict = {}
    coco, skipped = read_yolo_split(splits[split], names, skip=SKIPPED, examples=examples)
    return coco, skipped, examples


def _stamp(yaml_path: str) -> int:
    """A hash of the modification times of the yaml and of every file under the label
    folders beside its image folders (an edited label file reads again)."""
    times = [os.stat(yaml_path).st_mtime_ns]
    try:
        _, splits = read_data_yaml(yaml_path)
    except DatasetError:
        return hash(tuple(times))
    for folders in splits.values():
        for folder in folders:
            labels = osp.dirname(label_path(osp.join(folder, 'x.jpg')))
            for path, _, names in os.walk(labels):
                times += [os.stat(osp.join(path, n)).st_mtime_ns for n in sorted(names)]
    return hash(tuple(times))


def load_split(yaml_path: str, split: str) -> Tuple[dict, collections.Counter, dict]:
    """``(COCO dict, skipped lines by kind, first file:line of each kind)`` of one split of
    a YOLO export, read as training reads it (:data:`SKIPPED` kinds skipped, the rest an
    error). Read once per process for the dataset, its metric and the summary (the yaml's
    and the label files' modification times key the cache); each caller gets a copy."""
    yaml_path = osp.abspath(yaml_path)
    if not osp.isfile(yaml_path):
        raise DatasetError(f'{yaml_path}: no such file')
    coco, skipped, examples = _load_split(yaml_path, split, _stamp(yaml_path))
    return copy.deepcopy(coco), collections.Counter(skipped), dict(examples)


def describe_skipped(skipped: collections.Counter, examples: dict) -> str:
    """'skipped 3 label lines (2 values outside 0..1, e.g. a.txt:4; 1 ...)' or ''."""
    if not skipped:
        return ''
    parts = [f'{n} {kind}' + (f', e.g. {examples[kind]}' if kind in examples else '')
             for kind, n in skipped.items()]
    return f'skipped {sum(skipped.values())} label lines ({"; ".join(parts)})'
