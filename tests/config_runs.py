"""Every shipped config, run for real on data shaped like a user's (tests/configs/).

A run keeps the config's own pipeline, batch sampler, loop, hooks, evaluator and optimizer
wrapper. It changes only what these documented overrides change (README "Tests"), each
a ``--cfg-options`` a user could type:

* the data: ``*_dataloader.dataset.data_root`` and ``*_evaluator.ann_file`` point at a
  COCO-layout folder the test writes (JPEGs of about 640x480, both orientations) at the
  config's own relative paths;
* the model: pretrained weights off and the tests' one tiny model (``helpers.TINY_MODEL``:
  1 ViT block, 1 encoder + 1 decoder layer, 10 queries, 4 denoising, 10 detections per
  image) (:data:`SHRINK_MODEL`);
* the image scales: every ``scale``/``scales``/``crop_size`` of the pipelines x0.2 when
  the config's scales exceed 400 px (the recipe's 800x1333 becomes 160x266);
* the schedule: 2 training iterations (2 epochs for an epoch-based config of 1 iteration
  an epoch), validation and a checkpoint at the end, logging every iteration.
"""
from __future__ import annotations

import glob
import json
import os
import os.path as osp
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw

from helpers import REPO, TINY_MODEL

# and the configs the measurement tools ship (the INT8 measurement's recipe architecture)
CONFIGS = sorted(glob.glob(osp.join(REPO, 'configs', '*.py'))) + [
    osp.join(REPO, 'tools', 'analysis_tools', 'recipe_synthetic.py')]

SHRINK_MODEL = {'model.backbone.pretrained': False, **TINY_MODEL}
SCALE_KEYS = ('scale', 'scales', 'crop_size')
SHRINK_SCALE = 0.2  # applied when a config's image scales exceed LARGE_SCALE
LARGE_SCALE = 400
DATALOADERS = ('train_dataloader', 'val_dataloader', 'test_dataloader')

# (width, height): the sizes of phone photos and labelling-tool exports, both orientations
TRAIN_SIZES = ((640, 480), (480, 640), (704, 512), (512, 688), (600, 448), (640, 426))
VAL_SIZES = ((640, 480), (496, 640))


# -- data ---------------------------------------------------------------------------------

def _image(rng: np.random.Generator, w: int, h: int, boxes: Sequence[Tuple]) -> Image.Image:
    noise = rng.integers(60, 200, size=(h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
    img = Image.fromarray(noise).resize((w, h), Image.BILINEAR)
    draw = ImageDraw.Draw(img)
    for x, y, bw, bh in boxes:
        color = tuple(int(c) for c in rng.integers(0, 255, 3))
        draw.rectangle([x, y, x + bw, y + bh], fill=color, outline=(0, 0, 0))
    return img


def _boxes(rng, w: int, h: int, n: int) -> List[Tuple[float, float, float, float]]:
    out = []
    for _ in range(n):
        bw, bh = rng.uniform(0.15, 0.45) * w, rng.uniform(0.15, 0.45) * h
        x, y = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
        out.append((round(x, 1), round(y, 1), round(bw, 1), round(bh, 1)))
    return out


def write_split(root: str, ann_file: str, img_dir: str, classes: Sequence[str],
                sizes: Sequence[Tuple[int, int]], seed: int, empty: Sequence[int] = (),
                crowd_only: Sequence[int] = (), cat_ids: Optional[Sequence[int]] = None,
                png: Sequence[int] = (), gray: Sequence[int] = (),
                unused: Sequence[str] = ()) -> dict:
    """One split: images under ``root/img_dir`` and their COCO file ``root/ann_file``.

    Images whose index is in ``empty`` get no box, those in ``crowd_only`` one crowd box;
    the others 1-3 boxes, of the classes not in ``unused`` in turn. JPEGs, except PNGs at
    the indices in ``png``; grayscale at those in ``gray``. Category ids: ``cat_ids``, by
    default COCO-like, not contiguous (``3 * i + 1``).
    """
    rng = np.random.default_rng(seed)
    os.makedirs(osp.join(root, img_dir), exist_ok=True)
    cat_ids = list(cat_ids or [3 * i + 1 for i in range(len(classes))])
    used = [c for c, n in zip(cat_ids, classes) if n not in unused]
    images, anns = [], []
    for i, (w, h) in enumerate(sizes):
        n = 0 if i in empty else 1 if i in crowd_only else int(rng.integers(1, 4))
        boxes = _boxes(rng, w, h, n)
        name = f'{seed:03d}{i:04d}.' + ('png' if i in png else 'jpg')
        img = _image(rng, w, h, boxes)
        if i in gray:
            img = img.convert('L')
        img.save(osp.join(root, img_dir, name), **({} if i in png else dict(quality=90)))
        image_id = 1000 * seed + i + 1
        images.append(dict(id=image_id, file_name=name, width=w, height=h))
        for b in boxes:
            anns.append(dict(id=len(anns) + 1 + 10000 * seed, image_id=image_id,
                             category_id=used[len(anns) % len(used)], bbox=list(b),
                             area=b[2] * b[3], iscrowd=1 if i in crowd_only else 0))
    path = osp.join(root, ann_file)
    os.makedirs(osp.dirname(path), exist_ok=True)
    with open(path, 'w') as f:
        json.dump(dict(images=images, annotations=anns,
                       categories=[dict(id=c, name=n) for c, n in zip(cat_ids, classes)]), f)
    name_of = dict(zip(cat_ids, classes))
    per_class = {n: sum(1 for a in anns if not a['iscrowd'] and name_of[a['category_id']] == n)
                 for n in classes}
    return dict(images=len(images), trainable=len(images) - len(set(empty) | set(crowd_only)),
                boxes=sum(per_class.values()), boxes_per_class=per_class)


# A user's own dataset: 3 classes with spaces in their names, COCO-like ids, one class
# without any box, PNGs and JPEGs, a grayscale image, sizes around 640x480
OWN_CLASSES = ('red car', 'stop sign', 'traffic light')
OWN_CAT_IDS = (3, 17, 42)
OWN_UNUSED = ('traffic light', )


def write_own_dataset(root: str, layout: str) -> dict:
    """The dataset above in ``'coco2017'`` layout or ``'folders'`` (Roboflow/CVAT: train/,
    valid/, test/ each with ``_annotations.coco.json``). Returns each split's counts."""
    if layout == 'coco2017':
        paths = {s: (f'annotations/instances_{s}2017.json', f'{s}2017')
                 for s in ('train', 'val')}
    else:
        folders = dict(train='train', val='valid', test='test')
        paths = {s: (f'{f}/_annotations.coco.json', f) for s, f in folders.items()}
    sizes = dict(train=TRAIN_SIZES, val=VAL_SIZES, test=VAL_SIZES[::-1])
    out = {}
    for seed, (split, (ann, img)) in enumerate(paths.items(), start=1):
        out[split] = write_split(root, ann, img, OWN_CLASSES, sizes[split], seed,
                                 empty=(4, ) if split == 'train' else (),
                                 cat_ids=OWN_CAT_IDS, png=(1, ), gray=(0, ),
                                 unused=OWN_UNUSED)
    return out


def classes_of(cfg) -> Tuple[str, ...]:
    """The class names the config trains (its metainfo, else its dataset class's)."""
    from mmengine.registry import init_default_scope

    from mmdet.registry import DATASETS
    dataset = cfg.train_dataloader.dataset
    metainfo = dataset.get('metainfo', None) or {}
    if 'classes' in metainfo:
        return tuple(metainfo['classes'])
    init_default_scope('mmdet')
    return tuple(DATASETS.get(dataset.type).METAINFO['classes'])


def make_dataset_for(cfg, root: str) -> dict:
    """The config's train and val splits, at its own relative paths under ``root``:
    6 train images (one without boxes and one with only a crowd box: both filtered by
    the recipe) and 2 val images."""
    classes = classes_of(cfg)
    out = {}
    for key, sizes, seed, kwargs in (
            ('train_dataloader', TRAIN_SIZES, 1, dict(empty=(4, ), crowd_only=(5, ))),
            ('val_dataloader', VAL_SIZES, 2, {})):
        ds = cfg[key].dataset
        out[key] = write_split(root, ds.ann_file, ds.data_prefix['img'], classes, sizes, seed,
                               **kwargs)
    return out


# -- overrides ----------------------------------------------------------------------------

def data_options(cfg, root: str) -> Dict[str, str]:
    root = root.rstrip('/') + '/'
    opts = {}
    for key in DATALOADERS:
        if cfg.get(key, None):
            opts[f'{key}.dataset.data_root'] = root
    for key in ('val_evaluator', 'test_evaluator'):
        ds_key = key.replace('evaluator', 'dataloader')
        if cfg.get(key, None) and 'ann_file' in cfg[key]:
            opts[f'{key}.ann_file'] = root + cfg[ds_key].dataset.ann_file
    return opts


def _scale_items(node, path: str):
    """(dotted path, value) of every image scale in a pipeline (nested lists included)."""
    if isinstance(node, dict):
        for k, v in node.items():
            if k in SCALE_KEYS:
                yield f'{path}.{k}', v
            elif isinstance(v, (list, tuple, dict)):
                yield from _scale_items(v, f'{path}.{k}')
    elif isinstance(node, (list, tuple)):
        for i, v in enumerate(node):
            if isinstance(v, (list, tuple, dict)):
                yield from _scale_items(v, f'{path}.{i}')


def _max_side(value) -> int:
    flat = np.asarray(value, dtype=float).reshape(-1)
    return int(flat.max()) if flat.size else 0


def _scaled(value, factor: float):
    """``value`` (a size, a pair or a list of pairs) times ``factor``, as ints."""
    if isinstance(value, (list, tuple)):
        return type(value)(_scaled(v, factor) for v in value)
    return max(1, int(round(value * factor)))


def scale_options(cfg) -> Dict[str, object]:
    items = [(path, value) for key in DATALOADERS if cfg.get(key, None)
             for path, value in _scale_items(cfg[key].dataset.pipeline,
                                             f'{key}.dataset.pipeline')]
    if not items or max(_max_side(v) for _, v in items) <= LARGE_SCALE:
        return {}
    return {path: _scaled(value, SHRINK_SCALE) for path, value in items}


def schedule_options(cfg, iterations: int = 2) -> Dict[str, str]:
    """Train ``iterations`` iterations (epochs for an epoch loop: 1 batch per epoch on the
    test data), validating and checkpointing at the end."""
    if 'max_iters' in cfg.train_cfg:
        return {'train_cfg.max_iters': str(iterations), 'train_cfg.val_interval':
                str(iterations), 'default_hooks.checkpoint.interval': str(iterations),
                'default_hooks.logger.interval': '1'}
    return {'train_cfg.max_epochs': str(iterations), 'train_cfg.val_interval': '1',
            'default_hooks.checkpoint.interval': '1', 'default_hooks.logger.interval': '1'}


def as_argv(options: Dict[str, object]) -> List[str]:
    """``--cfg-options`` arguments as a user types them (``key=value``)."""
    return [f'{k}={v if isinstance(v, str) else str(v).replace(" ", "")}'
            for k, v in options.items()]
