"""COCO-format detection data, checked when loaded: clear errors, counted repairs.

Why not mmdet's ``CocoDataset`` as is: it reads any JSON through pycocotools, so a
missing file, a file that is not JSON or a wrong schema fails with a traceback from
deep inside pycocotools (``KeyError: 'images'``); and it drops bad boxes (zero size,
outside the image, unknown category) silently, so nobody learns that part of the data
was thrown away. :class:`CheckedCocoDataset` is that dataset plus:

* the annotation file is read and checked once: missing (or a missing data root), not
  JSON, or not COCO (lists, required keys and their types, duplicate ids, classes of
  the dataset that the file does not define) -> one-line :class:`AnnotationFileError`
  naming the file and the first problem;
* boxes are repaired or dropped, and counted in the log: non-finite coordinates, zero
  or negative size, unknown category id, entirely outside the image -> dropped; partly
  outside -> clipped to the image; under a pixel after clipping -> dropped (as mmdet);
* images left without boxes are kept, or filtered when ``filter_cfg.filter_empty_gt``
  (also those whose every box was dropped, which mmdet's filter misses, and those with
  crowd boxes only, as detectron2's ``filter_empty`` drops them);
* an image that the pipeline skipped (``CheckedLoadImageFromFile(skip_bad=True)``)
  cannot be skipped in a test-mode dataset: evaluation needs every image, so that is
  an :class:`ImageFileError` naming the image.

The validated dict is handed to pycocotools directly, so a large file is parsed once.

A YOLO export reads the same way: ``ann_file`` names its ``data.yaml`` and ``yolo_split``
the split; the labels become a COCO dict in memory (``datasets/yolo.py``), nothing is
written next to the data, and the label lines skipped there are counted in the same log
line.
"""
from __future__ import annotations

import json
import logging
import math
import os.path as osp
from collections import Counter
from numbers import Number
from typing import Collection, Dict, List, Optional, Tuple

from mmdet.datasets import CocoDataset
from mmdet.registry import DATASETS
from mmengine.fileio import exists, get_local_path
from mmengine.logging import print_log

from .errors import AnnotationFileError, DatasetError, ImageFileError
from .yolo import describe_skipped, is_yolo_yaml, load_split

# Why a box is dropped, in the order the checks run (and the log lists them).
DROP_REASONS = ('non-finite coordinates', 'zero or negative size', 'unknown category id',
                'outside the image', 'under 1 pixel after clipping', 'unknown image id')
CLIPPED = 'clipped to the image'
NOT_A_CLASS = 'category not among the classes'

_SCHEMA = ('COCO format: {"images": [{"id", "file_name", "width", "height"}], '
           '"annotations": [{"id", "image_id", "category_id", "bbox": [x, y, w, h], '
           '"area", "iscrowd"}], "categories": [{"id", "name"}]}')


def check_box(ann: dict, width: float, height: float,
              cat_ids: Collection[int]) -> Tuple[Optional[list], Optional[str]]:
    """One COCO annotation's box checked against its image: ``([x1, y1, x2, y2], None)``,
    ``(box clipped to the image, CLIPPED)``, or ``(None, reason)`` with a reason of
    :data:`DROP_REASONS` (``cat_ids``: the file's category ids).

    The one place that decides which boxes train: the dataset, the data summary of
    ``--data-root`` and ``tools/check_dataset.py`` all use it.
    """
    x, y, w, h = (float(v) for v in ann['bbox'])
    if not all(math.isfinite(v) for v in (x, y, w, h)):
        return None, 'non-finite coordinates'
    if w <= 0 or h <= 0:
        return None, 'zero or negative size'
    if ann['category_id'] not in cat_ids:
        return None, 'unknown category id'
    x1, y1 = max(x, 0.0), max(y, 0.0)
    x2, y2 = min(x + w, float(width)), min(y + h, float(height))
    if x2 <= x1 or y2 <= y1:
        return None, 'outside the image'
    if x2 - x1 < 1 or y2 - y1 < 1:
        return None, 'under 1 pixel after clipping'
    clipped = (x1, y1, x2, y2) != (x, y, x + w, y + h)
    return [x1, y1, x2, y2], CLIPPED if clipped else None


def _trainable(data_info: dict) -> bool:
    """Whether an image has a box to train on (crowd boxes are ignored in training)."""
    return any(not i['ignore_flag'] for i in data_info['instances'])


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, Number) and not isinstance(v, bool)


def _where(kind: str, index: int, item: dict) -> str:
    ident = item.get('id') if isinstance(item, dict) else None
    return f'{kind}[{index}]' + (f' (id {ident!r})' if ident is not None else '')


def read_coco_file(path: str, backend_args: Optional[dict] = None,
                   test_mode: bool = False) -> dict:
    """Read and check a COCO annotation file; :class:`AnnotationFileError` if it is bad.

    Checks structure only (lists, keys, types, unique ids): bad box values are repaired
    or dropped later, with counts. ``area`` and ``iscrowd`` are required in test mode
    only, where pycocotools' evaluation reads them; training does not use them.
    """
    try:
        with get_local_path(path, backend_args=backend_args) as local_path:
            with open(local_path, encoding='utf-8') as f:
                data = json.load(f)
    except json.JSONDecodeError as e:
        raise AnnotationFileError(f'{path}: not valid JSON (line {e.lineno}, column '
                                  f'{e.colno}: {e.msg})') from None
    except UnicodeDecodeError:
        raise AnnotationFileError(f'{path}: not a JSON text file (not UTF-8)') from None
    except (FileNotFoundError, IsADirectoryError):
        raise AnnotationFileError(f'annotation file not found: {path}') from None

    def bad(problem: str):
        return AnnotationFileError(f'{path}: {problem} ({_SCHEMA})')

    if not isinstance(data, dict):
        raise bad(f'the top level is a JSON {type(data).__name__}, not an object')
    required = ['images', 'categories'] + ([] if test_mode else ['annotations'])
    for key in required:
        if key not in data:
            raise bad(f'no "{key}" list')
    for key in ('images', 'annotations', 'categories'):
        if key in data and not isinstance(data[key], list):
            raise bad(f'"{key}" is a JSON {type(data[key]).__name__}, not a list')

    def check_items(kind: str, items: list, keys: Dict[str, tuple]) -> None:
        seen = set()
        for i, item in enumerate(items):
            if not isinstance(item, dict):
                raise bad(f'{kind}[{i}] is a JSON {type(item).__name__}, not an object')
            for key, (check, expected) in keys.items():
                if key not in item:
                    raise bad(f'{_where(kind, i, item)} has no "{key}"')
                if not check(item[key]):
                    raise bad(f'{_where(kind, i, item)}: "{key}" is {item[key]!r}, '
                              f'expected {expected}')
            if item['id'] in seen:
                raise bad(f'{_where(kind, i, item)}: duplicate id')
            seen.add(item['id'])

    check_items('images', data['images'], {
        'id': (_is_int, 'an integer'),
        'file_name': (lambda v: isinstance(v, str) and v != '', 'a file name'),
        'width': (lambda v: _is_number(v) and v > 0, 'a positive number'),
        'height': (lambda v: _is_number(v) and v > 0, 'a positive number')})
    check_items('categories', data['categories'], {
        'id': (_is_int, 'an integer'), 'name': (lambda v: isinstance(v, str), 'a string')})
    ann_keys = {
        'id': (_is_int, 'an integer'),
        'image_id': (_is_int, 'an integer'),
        'category_id': (_is_int, 'an integer'),
        'bbox': (lambda v: isinstance(v, list) and len(v) == 4 and all(
            _is_number(x) for x in v), 'a list of 4 numbers [x, y, w, h]')}
    if test_mode:
        ann_keys.update({'area': (_is_number, 'a number'),
                         'iscrowd': (lambda v: v in (0, 1), '0 or 1')})
    check_items('annotations', data.get('annotations', []), ann_keys)
    return data


def coco_api(data: dict, api=None):
    """A pycocotools index (mmdet's ``COCO`` wrapper, or ``api``) of an already read and
    checked COCO dict, with mmdet's alias names."""
    if api is None:
        from mmdet.datasets.api_wrappers import COCO as api
    coco = api()
    coco.dataset = data
    coco.createIndex()
    coco.img_ann_map, coco.cat_img_map = coco.imgToAnns, coco.catToImgs  # mmdet aliases
    return coco


def read_annotations(path: str, split: Optional[str] = None,
                     backend_args: Optional[dict] = None, test_mode: bool = False) -> dict:
    """The checked COCO dict of ``path``: a COCO file (:func:`read_coco_file`), or the
    ``split`` of a YOLO ``data.yaml`` read into COCO form (boxes already checked there;
    the lines skipped are in ``data['yolo_skipped']``, ``data['yolo_examples']``)."""
    if not is_yolo_yaml(path):
        return read_coco_file(path, backend_args, test_mode)
    if split is None:
        raise DatasetError(f'{path}: a YOLO data.yaml needs the split to read (the '
                           "dataset's yolo_split: 'train', 'val' or 'test')")
    data, skipped, examples = load_split(path, split)
    data['yolo_skipped'], data['yolo_examples'] = skipped, examples
    return data


@DATASETS.register_module()
class CheckedCocoDataset(CocoDataset):
    """mmdet's ``CocoDataset`` with a checked annotation file and counted box repairs.

    Same arguments as ``CocoDataset``; see the module docstring for what is checked.
    After loading, :attr:`report` holds the counts that were logged: ``Counter`` of
    reasons (``DROP_REASONS``, ``CLIPPED``, ``NOT_A_CLASS``) plus ``'kept'``,
    ``'images'``, ``'images without boxes'``, ``'images filtered'``.
    """

    def __init__(self, *args, yolo_split: Optional[str] = None, **kwargs) -> None:
        self.report: Counter = Counter()
        self.yolo_split = yolo_split
        self.yolo_note = ''
        super().__init__(*args, **kwargs)

    # -- loading ---------------------------------------------------------------------------

    def load_data_list(self) -> List[dict]:
        self._check_paths()
        data = read_annotations(self.ann_file, self.yolo_split, self.backend_args,
                                self.test_mode)
        self.yolo_note = describe_skipped(data.pop('yolo_skipped', Counter()),
                                          data.pop('yolo_examples', {}))
        self._check_classes(data)
        self._file_cat_ids = {c['id'] for c in data['categories']}
        image_ids = {img['id'] for img in data['images']}
        orphans = sum(1 for a in data.get('annotations', []) if a['image_id'] not in image_ids)
        data.setdefault('annotations', [])

        coco = coco_api(data, self.COCOAPI)
        # mmdet's load_data_list opens the file through self.COCOAPI(path); handing it
        # the index built from the checked dict avoids parsing a large file twice.
        self.COCOAPI = lambda _path: coco
        try:
            self.report = Counter({'unknown image id': orphans} if orphans else {})
            data_list = super().load_data_list()
        finally:
            del self.COCOAPI
        self.report['images'] = len(data_list)
        self.report['images without boxes'] = sum(1 for d in data_list if not _trainable(d))
        return data_list

    def _check_paths(self) -> None:
        if exists(self.ann_file, backend_args=self.backend_args):
            return
        root = self.data_root
        if root and '://' not in root and not osp.isdir(root):
            raise DatasetError(f'data root not found: {root} (set the dataset\'s '
                               'data_root, e.g. --cfg-options '
                               'train_dataloader.dataset.data_root=PATH)')
        raise AnnotationFileError(f'annotation file not found: {self.ann_file}')

    def _check_classes(self, data: dict) -> None:
        names = [c['name'] for c in data['categories']]
        missing = [c for c in self.metainfo['classes'] if c not in names]
        if missing:
            raise AnnotationFileError(
                f'{self.ann_file}: the dataset\'s classes {missing} are not categories of '
                f'this file (it has {names[:10]}{"..." if len(names) > 10 else ""}); '
                'set metainfo=dict(classes=...) to names the file uses')

    def parse_data_info(self, raw_data_info: dict) -> dict:
        """mmdet's image fields, and instances with each bad box dropped or clipped."""
        img = raw_data_info['raw_img_info']
        data_info = super().parse_data_info(dict(raw_img_info=img, raw_ann_info=[]))
        instances = []
        for ann in raw_data_info['raw_ann_info']:
            if ann.get('ignore', False):
                continue
            bbox = self._checked_box(ann, img['width'], img['height'])
            if bbox is None:
                continue
            instance = dict(bbox=bbox, bbox_label=self.cat2label[ann['category_id']],
                            ignore_flag=1 if ann.get('iscrowd', False) else 0)
            if ann.get('segmentation', None):
                instance['mask'] = ann['segmentation']
            instances.append(instance)
        self.report['kept'] += len(instances)
        data_info['instances'] = instances
        return data_info

    def _checked_box(self, ann: dict, width: float, height: float) -> Optional[list]:
        """``[x1, y1, x2, y2]`` inside the image, or None (the reason is counted)."""
        box, problem = check_box(ann, width, height, self._file_cat_ids)
        if box is None:
            self.report[problem] += 1
            return None
        if ann['category_id'] not in self.cat2label:
            self.report[NOT_A_CLASS] += 1  # the dataset trains on a subset of classes
            return None
        if problem == CLIPPED:
            self.report[CLIPPED] += 1
        return box

    # -- filtering and reporting -----------------------------------------------------------

    def filter_data(self) -> List[dict]:
        kept = super().filter_data()
        if not self.test_mode and (self.filter_cfg or {}).get('filter_empty_gt', False):
            # every box of it was dropped, or only crowd boxes (ignored in training) remain
            kept = [d for d in kept if _trainable(d)]
        self.report['images filtered'] = len(self.data_list) - len(kept)
        if not kept:
            why = (f' ({len(self.data_list)} images, none with a box to train on)'
                   if self.data_list else ' (its "images" list is empty)')
            task = 'evaluate' if self.test_mode else 'train on'
            raise DatasetError(f'{self.ann_file}: no image to {task}{why}: check the file, '
                               'or the split it should be')
        return kept

    def full_init(self) -> None:
        if self._fully_initialized:
            return
        super().full_init()
        self._log_report()

    def _log_report(self) -> None:
        r = self.report
        dropped = {k: r[k] for k in DROP_REASONS if r[k]}
        parts = [f'{r["images"]} images, {r["kept"]} boxes kept']
        if dropped:
            parts.append(f'dropped {sum(dropped.values())} boxes (' + ', '.join(
                f'{n} {k}' for k, n in dropped.items()) + ')')
        if r[CLIPPED]:
            parts.append(f'clipped {r[CLIPPED]} boxes to the image')
        if r[NOT_A_CLASS]:
            parts.append(f'skipped {r[NOT_A_CLASS]} boxes of categories not among the '
                         'classes')
        empty = r['images without boxes']
        if empty:
            filtered = r['images filtered']
            parts.append(f'{empty} images without boxes ' + (
                f'(filtered: filter_cfg.filter_empty_gt; {filtered} images filtered in all)'
                if filtered else '(kept)'))
        if self.yolo_note:
            parts.append(self.yolo_note)
        level = logging.WARNING if dropped or r[CLIPPED] or self.yolo_note else logging.INFO
        source = self.ann_file + (f' ({self.yolo_split})' if self.yolo_split else '')
        print_log(f'{type(self).__name__} {source}: ' + '; '.join(parts),
                  logger='current', level=level)

    # -- images the pipeline skipped -------------------------------------------------------

    def prepare_data(self, idx: int):
        data = super().prepare_data(idx)
        if data is None and self.test_mode:
            path = self.get_data_info(idx).get('img_path')
            raise ImageFileError(
                f'{path}: the test pipeline skipped this image (unreadable?); evaluation '
                f'needs every image of {self.ann_file}: fix the image or remove it there')
        return data
