"""``tools/check_dataset.py``: what a COCO-format dataset holds and what is wrong with it.

Per split: images, boxes, boxes per class, image and box size summaries, and the
problems training would meet, each marked ``error`` (training would stop: missing or
undecodable images, a file that is not COCO or has duplicate ids, splits that disagree
on the classes, no image to train on) or ``warning`` (boxes training drops or clips,
categories without boxes, the same image listed twice) or ``note`` (images without boxes,
crowd boxes: both left out of training). The counts come from the checks training uses
(:func:`summarize_split`), so they are what a run would see.
"""
from __future__ import annotations

import math
import os
import os.path as osp
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np

from projects.dino_dinov2.datasets.coco_summary import (CLIPPED, DROP_REASONS, SplitSummary,
                                                         compare_classes, summarize_split)
from projects.dino_dinov2.datasets.errors import DatasetError
from projects.dino_dinov2.datasets.layout import Split

# COCO's size ranges (box area in px^2)
SMALL, MEDIUM = 32 ** 2, 96 ** 2


@dataclass
class Finding:
    level: str  # 'error', 'warning' or 'note'
    split: str
    text: str


@dataclass
class DatasetReport:
    summaries: Dict[str, SplitSummary] = field(default_factory=dict)
    findings: List[Finding] = field(default_factory=list)

    @property
    def errors(self) -> List[Finding]:
        return [f for f in self.findings if f.level == 'error']


def _examples(items: Sequence[str], n: int = 3) -> str:
    shown = ', '.join(items[:n])
    return shown + (f' (+{len(items) - n} more)' if len(items) > n else '')


def check_splits(splits: Sequence[Split], check_images: bool = True) -> DatasetReport:
    """Summarise and check every split (images decoded when ``check_images``)."""
    report = DatasetReport()
    for split in splits:
        try:
            s = summarize_split(split.name, split.ann_file, split.img_dir,
                                check_images=check_images)
        except DatasetError as e:  # not COCO, duplicate ids, no categories ...
            report.findings.append(Finding('error', split.name, str(e)))
            continue
        report.summaries[split.name] = s
        add = report.findings.append
        if s.bad_images:
            add(Finding('error', s.name, f'{len(s.bad_images)} images missing or unreadable: '
                                         f'{_examples(s.bad_images)}'))
        for reason in DROP_REASONS:
            if s.problems[reason]:
                add(Finding('warning', s.name, f'{s.problems[reason]} boxes dropped: {reason}'
                                               f' ({_examples(s.examples[reason])})'))
        if s.problems[CLIPPED]:
            add(Finding('warning', s.name, f'{s.problems[CLIPPED]} boxes partly outside the '
                                           f'image, clipped ({_examples(s.examples[CLIPPED])})'))
        for reason in [r for r in s.problems if r.startswith('label line: ')]:  # YOLO
            add(Finding('warning', s.name, f'{s.problems[reason]} YOLO label lines skipped: '
                                           f'{reason[len("label line: "):]} '
                                           f'({_examples(s.examples[reason])})'))
        if s.duplicate_files:
            add(Finding('warning', s.name, f'{len(s.duplicate_files)} image files listed more '
                                           f'than once: {_examples(s.duplicate_files)}'))
        if s.empty_classes:
            add(Finding('warning', s.name, f'categories without boxes: '
                                           f'{", ".join(s.empty_classes)}'))
        if s.images_without_boxes:
            add(Finding('note', s.name, f'{len(s.images_without_boxes)} images without boxes '
                                        f'(left out of training): '
                                        f'{_examples(s.images_without_boxes)}'))
        if s.crowd_boxes:
            add(Finding('note', s.name, f'{s.crowd_boxes} crowd boxes (ignored in training, '
                                        'evaluated as "ignore" regions)'))
    train = report.summaries.get('train')
    if train is not None:
        if train.trainable_images == 0:
            report.findings.append(Finding('error', 'train', 'no image with a box to train on'))
        for other in report.summaries.values():
            problem = compare_classes(train, other) if other is not train else None
            if problem:
                report.findings.append(Finding('error', other.name, problem))
    return report


def _size_line(label: str, sizes: np.ndarray) -> str:
    if not len(sizes):
        return f'{label}: -'
    lo, med, hi = (np.percentile(sizes, q, axis=0) for q in (0, 50, 100))
    return (f'{label} (w x h): min {lo[0]:.0f}x{lo[1]:.0f}, median {med[0]:.0f}x{med[1]:.0f}, '
            f'max {hi[0]:.0f}x{hi[1]:.0f}')


def format_report(report: DatasetReport) -> str:
    """The report as text: per split, counts, the per-class table, sizes, findings."""
    out = []
    for s in report.summaries.values():
        out.append(f'== {s.name}: {s.ann_file} (images in {s.img_dir})')
        out.append(f'{s.images} images, {s.boxes} boxes'
                   + (f' (+{s.crowd_boxes} crowd)' if s.crowd_boxes else '')
                   + f', {len(s.classes)} classes')
        width = max([5] + [len(c) for c in s.classes])
        out.append(f'| {"class":<{width}} | boxes |')
        out.append(f'| {"-" * width} | ----- |')
        out += [f'| {c:<{width}} | {s.boxes_per_class.get(c, 0):>5} |' for c in s.classes]
        out.append(_size_line('image sizes', s.image_sizes))
        out.append(_size_line('box sizes', s.box_sizes))
        if len(s.box_sizes):
            area = s.box_sizes[:, 0] * s.box_sizes[:, 1]
            out.append(f'boxes by COCO size: {int((area < SMALL).sum())} small, '
                       f'{int(((area >= SMALL) & (area < MEDIUM)).sum())} medium, '
                       f'{int((area >= MEDIUM).sum())} large')
    out.append('== findings')
    out += [f'{f.level}: {f.split}: {f.text}' for f in report.findings] or ['none']
    errors = len(report.errors)
    out.append(f'{errors} error{"" if errors == 1 else "s"}: '
               + ('training would stop on this data' if errors else 'the data can train'))
    return '\n'.join(out)


def draw_samples(summary: SplitSummary, n: int, path: str, seed: int = 0,
                 thumb: int = 320, columns: int = 4) -> Optional[str]:
    """A PNG grid of ``n`` images of the split with their boxes and class names drawn
    (any layout the project reads: a COCO file or a YOLO ``data.yaml`` split)."""
    from PIL import Image, ImageDraw

    from projects.dino_dinov2.datasets.checked_coco import read_annotations
    data = read_annotations(summary.ann_file, summary.name)
    names = dict(zip(summary.cat_ids, summary.classes))
    by_image: Dict[int, list] = {}
    for ann in data.get('annotations', []):
        by_image.setdefault(ann['image_id'], []).append(ann)
    images = data['images']
    if not images or n <= 0:
        return None
    rng = np.random.default_rng(seed)
    chosen = [images[i] for i in sorted(rng.choice(len(images), min(n, len(images)),
                                                   replace=False))]
    rows = math.ceil(len(chosen) / columns)
    grid = Image.new('RGB', (columns * thumb, rows * thumb), (255, 255, 255))
    palette = [(230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180),
               (70, 240, 240), (240, 50, 230), (210, 245, 60)]
    for k, img in enumerate(chosen):
        try:
            picture = Image.open(osp.join(summary.img_dir, img['file_name'])).convert('RGB')
        except OSError:
            picture = Image.new('RGB', (int(img['width']), int(img['height'])), (128, 128, 128))
        scale = thumb / max(picture.size)
        picture = picture.resize((max(1, round(picture.width * scale)),
                                  max(1, round(picture.height * scale))))
        draw = ImageDraw.Draw(picture)  # drawn at thumbnail scale: labels stay readable
        for ann in by_image.get(img['id'], []):
            x, y, w, h = (float(v) * scale for v in ann['bbox'])
            cat = ann['category_id']
            color = palette[summary.cat_ids.index(cat) % len(palette)] \
                if cat in summary.cat_ids else (0, 0, 0)
            draw.rectangle([x, y, x + w, y + h], outline=color, width=2)
            label = names.get(cat, f'? id {cat}') + (' (crowd)' if ann.get('iscrowd') else '')
            left, top, right, bottom = draw.textbbox((x + 2, y + 1), label)
            draw.rectangle([left - 1, top - 1, right + 1, bottom + 1], fill=color)
            draw.text((x + 2, y + 1), label, fill=(255, 255, 255))
        draw.text((3, picture.height - 12), img['file_name'], fill=(255, 255, 255))
        grid.paste(picture, ((k % columns) * thumb, (k // columns) * thumb))
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    grid.save(path)
    return path
