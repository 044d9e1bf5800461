"""What a COCO-format split holds: images, boxes per class, sizes and problems.

Used by ``--data-root`` (classes, counts, the schedule's images per epoch) and by
``tools/check_dataset.py``. The file is read and checked by :func:`read_coco_file` and
every box by :func:`check_box`, the checks :class:`CheckedCocoDataset` trains with, so a
summary counts exactly the boxes and images a training run uses.
"""
from __future__ import annotations

import os.path as osp
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np

from .checked_coco import CLIPPED, DROP_REASONS, check_box, read_annotations
from .errors import DatasetError, ImageFileError


@dataclass
class SplitSummary:
    """One split. Sizes are (width, height) in pixels; ``problems`` counts boxes by
    reason (:data:`DROP_REASONS` and ``'clipped to the image'``) with a few examples."""
    name: str
    ann_file: str
    img_dir: str
    classes: Tuple[str, ...]  # the categories' names, in category-id order
    cat_ids: Tuple[int, ...]
    images: int = 0
    boxes: int = 0  # boxes a training run uses: valid, not crowd
    crowd_boxes: int = 0
    boxes_per_class: Dict[str, int] = field(default_factory=dict)
    images_without_boxes: List[str] = field(default_factory=list)
    duplicate_files: List[str] = field(default_factory=list)
    problems: Counter = field(default_factory=Counter)
    examples: Dict[str, List[str]] = field(default_factory=lambda: defaultdict(list))
    image_sizes: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    box_sizes: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))
    bad_images: List[str] = field(default_factory=list)  # 'file: problem' (checked only)

    @property
    def trainable_images(self) -> int:
        """Images with at least one box to train on (what ``filter_empty_gt`` keeps)."""
        return self.images - len(self.images_without_boxes)

    @property
    def empty_classes(self) -> List[str]:
        return [c for c in self.classes if not self.boxes_per_class.get(c)]

    def describe(self) -> str:
        """'train: 245 images (3 without boxes), 1,034 boxes'."""
        empty = f' ({len(self.images_without_boxes)} without boxes)' \
            if self.images_without_boxes else ''
        return f'{self.name}: {self.images} images{empty}, {self.boxes} boxes'


def classes_of(data: dict, path: str) -> Tuple[Tuple[str, ...], Tuple[int, ...]]:
    """Category names and ids of a COCO dict, in id order; names must be unique."""
    cats = sorted(data['categories'], key=lambda c: c['id'])
    seen = {}
    for c in cats:
        if c['name'] in seen:
            raise DatasetError(f'{path}: category name {c["name"]!r} is used by ids '
                               f'{seen[c["name"]]} and {c["id"]}: names must be unique')
        seen[c['name']] = c['id']
    if not cats:
        raise DatasetError(f'{path}: no categories: a detector needs at least one class')
    return tuple(c['name'] for c in cats), tuple(c['id'] for c in cats)


def summarize_split(name: str, ann_file: str, img_dir: str, check_images: bool = False,
                    max_examples: int = 3) -> SplitSummary:
    """Read ``ann_file`` (checked; a YOLO ``data.yaml``: its split ``name``) and summarise
    it; with ``check_images`` every image file under ``img_dir`` is read and decoded as
    training reads it."""
    data = read_annotations(ann_file, name)
    yolo_skipped, yolo_examples = data.pop('yolo_skipped', {}), data.pop('yolo_examples', {})
    classes, cat_ids = classes_of(data, ann_file)
    name_of = dict(zip(cat_ids, classes))
    s = SplitSummary(name, ann_file, img_dir, classes, cat_ids, images=len(data['images']),
                     boxes_per_class={c: 0 for c in classes})
    by_image = defaultdict(list)
    for ann in data.get('annotations', []):
        by_image[ann['image_id']].append(ann)
    files = Counter(img['file_name'] for img in data['images'])
    s.duplicate_files = sorted(f for f, n in files.items() if n > 1)
    sizes, boxes = [], []
    known = set(cat_ids)
    for img in data['images']:
        w, h = float(img['width']), float(img['height'])
        sizes.append((w, h))
        kept = 0
        for ann in by_image.get(img['id'], []):
            box, problem = check_box(ann, w, h, known)
            if problem is not None:
                s.problems[problem] += 1
                if len(s.examples[problem]) < max_examples:
                    s.examples[problem].append(f'{img["file_name"]} (annotation '
                                               f'{ann["id"]})')
            if box is None:
                continue
            if ann.get('iscrowd', 0):
                s.crowd_boxes += 1
                continue
            kept += 1
            s.boxes_per_class[name_of[ann['category_id']]] += 1
            boxes.append((box[2] - box[0], box[3] - box[1]))
        if not kept:
            s.images_without_boxes.append(img['file_name'])
    image_ids = {img['id'] for img in data['images']}
    orphans = sum(1 for ann in data.get('annotations', []) if ann['image_id'] not in image_ids)
    if orphans:
        s.problems['unknown image id'] += orphans
    for kind, n in yolo_skipped.items():  # label lines a YOLO read skipped
        s.problems[f'label line: {kind}'] += n
        s.examples[f'label line: {kind}'].append(yolo_examples.get(kind, ''))
    s.boxes = len(boxes)
    s.image_sizes = np.asarray(sizes, dtype=float).reshape(-1, 2)
    s.box_sizes = np.asarray(boxes, dtype=float).reshape(-1, 2)
    if check_images:
        s.bad_images = check_image_files(img_dir, [img['file_name'] for img in data['images']])
    return s


def check_image_files(img_dir: str, file_names: List[str]) -> List[str]:
    """'file: problem' for each image that is missing or cannot be decoded, read the way
    training reads it (:class:`CheckedLoadImageFromFile`)."""
    from .checked_loading import CheckedLoadImageFromFile
    loader = CheckedLoadImageFromFile()
    bad = []
    for name in dict.fromkeys(file_names):
        try:
            loader(dict(img_path=osp.join(img_dir, name)))
        except ImageFileError as e:
            bad.append(str(e))
    return bad


def compare_classes(train: SplitSummary, other: SplitSummary) -> Optional[str]:
    """None when ``other`` has the training split's class names; else how they differ."""
    if set(other.classes) == set(train.classes):
        return None
    missing = [c for c in train.classes if c not in other.classes]
    extra = [c for c in other.classes if c not in train.classes]
    parts = []
    if missing:
        parts.append(f'missing there: {missing}')
    if extra:
        parts.append(f'only there: {extra}')
    return (f'the {other.name} file {other.ann_file} has other categories than the training '
            f'file {train.ann_file} ({"; ".join(parts)}); both must name the same classes')


__all__ = ['SplitSummary', 'classes_of', 'summarize_split', 'check_image_files',
           'compare_classes', 'DROP_REASONS', 'CLIPPED']
