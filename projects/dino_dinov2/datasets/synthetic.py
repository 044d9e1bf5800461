"""A synthetic COCO-format detection dataset: coloured shapes on textured backgrounds.

The project's embedded default: it needs no download, trains a small detector from
scratch in minutes on a CPU, and every box is exact (computed from the drawn geometry).
Deterministic for a given seed.
"""
from __future__ import annotations

import json
import math
import os
import os.path as osp
from typing import Dict, List, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw

try:
    from tqdm import tqdm
except ImportError:  # pragma: no cover - tqdm comes with mmdet
    tqdm = None

# (name, RGB colour); class i is always drawn as shape i in colour i.
CLASSES: Tuple[Tuple[str, Tuple[int, int, int]], ...] = (
    ('circle', (220, 40, 40)),
    ('square', (40, 170, 60)),
    ('triangle', (40, 80, 220)),
    ('diamond', (230, 190, 30)),
)
DEFAULT_NUM_CLASSES = 3


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, box: Sequence[float],
                colour: Tuple[int, int, int]) -> None:
    x0, y0, x1, y1 = box
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    # PIL fills pixels [x0, x1] inclusive: draw to x1 - 1 so the shape covers [x0, x1).
    if shape == 'circle':
        draw.ellipse([x0, y0, x1 - 1, y1 - 1], fill=colour)
    elif shape == 'square':
        draw.rectangle([x0, y0, x1 - 1, y1 - 1], fill=colour)
    elif shape == 'triangle':
        draw.polygon([(cx, y0), (x1 - 1, y1 - 1), (x0, y1 - 1)], fill=colour)
    elif shape == 'diamond':
        draw.polygon([(cx, y0), (x1 - 1, cy), (cx, y1 - 1), (x0, cy)], fill=colour)
    else:
        raise ValueError(f'unknown shape {shape!r}')


def _background(rng: np.random.Generator, h: int, w: int) -> Image.Image:
    """A smooth colour gradient plus noise, away from the saturated shape colours."""
    c0, c1 = rng.uniform(60, 160, size=(2, 3))
    t = np.linspace(0, 1, w)[None, :, None] if rng.random() < 0.5 else \
        np.linspace(0, 1, h)[:, None, None]
    img = c0 * (1 - t) + c1 * t + rng.normal(0, 12, size=(h, w, 3))
    img = np.broadcast_to(img, (h, w, 3))
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def _iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def make_image(rng: np.random.Generator, size: int, num_classes: int,
               max_objects: int, min_size: int, max_size: int
               ) -> Tuple[Image.Image, List[Tuple[int, List[int]]]]:
    """Draw one image; returns it and [(class index, [x0, y0, x1, y1])] in pixels."""
    img = _background(rng, size, size)
    draw = ImageDraw.Draw(img)
    objects: List[Tuple[int, List[int]]] = []
    n = int(rng.integers(1, max_objects + 1))
    for _ in range(n * 20):  # rejection sampling: objects do not overlap
        if len(objects) == n:
            break
        s = int(rng.integers(min_size, max_size + 1))
        aspect = rng.uniform(0.75, 1.33)
        w, h = int(round(s * math.sqrt(aspect))), int(round(s / math.sqrt(aspect)))
        w, h = min(w, size), min(h, size)
        x0, y0 = int(rng.integers(0, size - w + 1)), int(rng.integers(0, size - h + 1))
        box = [x0, y0, x0 + w, y0 + h]
        if any(_iou(box, b) > 0.0 for _, b in objects):  # no overlap: boxes stay exact
            continue
        cls = int(rng.integers(0, num_classes))
        objects.append((cls, box))
    for cls, box in objects:
        _draw_shape(draw, CLASSES[cls][0], box, CLASSES[cls][1])
    return img, objects


def generate_split(out_dir: str, split: str, num_images: int, seed: int,
                   image_size: int = 128, num_classes: int = DEFAULT_NUM_CLASSES,
                   max_objects: int = 4, min_size: int = 14, max_size: int = 56,
                   progress: bool = True) -> str:
    """Write ``out_dir/{split}/*.png`` and ``out_dir/annotations/instances_{split}.json``.

    Returns the annotation file path.
    """
    if not 1 <= num_classes <= len(CLASSES):
        raise ValueError(f'num_classes must be in 1..{len(CLASSES)}, got {num_classes}')
    img_dir = osp.join(out_dir, split)
    os.makedirs(img_dir, exist_ok=True)
    os.makedirs(osp.join(out_dir, 'annotations'), exist_ok=True)
    # SeedSequence keeps the splits independent but reproducible for one seed.
    rng = np.random.default_rng(np.random.SeedSequence([seed, sum(map(ord, split))]))
    images, annotations = [], []
    it = range(num_images)
    if progress and tqdm is not None:
        it = tqdm(it, desc=f'synthetic {split}', unit='img')
    for i in it:
        img, objects = make_image(rng, image_size, num_classes, max_objects, min_size,
                                  max_size)
        file_name = f'{i:06d}.png'
        img.save(osp.join(img_dir, file_name))
        images.append(dict(id=i + 1, file_name=file_name, width=image_size,
                           height=image_size))
        for cls, (x0, y0, x1, y1) in objects:
            annotations.append(dict(
                id=len(annotations) + 1, image_id=i + 1, category_id=cls + 1,
                bbox=[x0, y0, x1 - x0, y1 - y0], area=(x1 - x0) * (y1 - y0), iscrowd=0))
    coco = dict(
        info=dict(description=f'dino-dinov2 synthetic shapes, {split}, seed {seed}'),
        images=images, annotations=annotations,
        categories=[dict(id=i + 1, name=CLASSES[i][0], supercategory='shape')
                    for i in range(num_classes)])
    ann_file = osp.join(out_dir, 'annotations', f'instances_{split}.json')
    with open(ann_file, 'w') as f:
        json.dump(coco, f)
    return ann_file


def generate_synthetic_coco(out_dir: str = 'data/synthetic', num_train: int = 256,
                            num_val: int = 64, seed: int = 0, **kwargs) -> Dict[str, str]:
    """Generate the train and val splits; returns {split: annotation file}."""
    return {
        'train': generate_split(out_dir, 'train', num_train, seed, **kwargs),
        'val': generate_split(out_dir, 'val', num_val, seed, **kwargs),
    }
