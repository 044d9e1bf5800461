"""Augmentation presets for ``tools/train.py --aug``: ``recipe`` and ``small``.

``recipe`` is the config's own training pipeline (for the recipe configs, DETR's: flip, then
either a multi-scale resize or a resize-crop-resize, each half the time), tuned on COCO's
118k images. ``small`` adds to it what the fine-tuning peers ship for datasets of a few
hundred images, where the recipe's geometry alone lets a detector memorise the images:

============================  ==========================================================
transform (mmdet)             why, and where the peers have it
============================  ==========================================================
``Brightness``, ``Contrast``, mild photometric jitter (factor 0.8..1.2, each half the
``Color`` (saturation)        time, on uint8 images): RF-DETR's ``AUG_CONSERVATIVE``
                              ("under 500 images": flip + mild brightness/contrast),
                              D-FINE/DEIM's ``RandomPhotometricDistort``. Hue is left
                              alone and channels are never swapped (colour is often what
                              tells classes apart).
``RandomAffine`` (half the    scale jitter 0.75..1.25 and translation up to 10 % of the
time; no rotation, no shear)  image, borders filled grey: objects at more sizes and
                              places than a dataset of a few hundred images shows;
                              YOLO's ``scale``/``translate``, D-FINE's ``RandomZoomOut``.
                              The canvas keeps its size, so the aspect-ratio batch
                              sampler groups images as before.
more crop                     the recipe's resize-crop-resize branch 70 % of the time
                              instead of 50 % (D-FINE/DEIM crop with ``RandomIoUCrop``
                              80 % of the time); a config without that branch (the
                              synthetic one) gets a ``RandomCrop`` of 60..100 % of the
                              image half the time before its resize.
``RandomFlip`` 0.5            kept from the recipe (every peer has it).
============================  ==========================================================

The preset edits the training pipeline of the config in place; validation and test are not
augmented. :func:`describe_augmentation` is the log line.
"""
from __future__ import annotations

import copy
from typing import List

from ..errors import ConfigError

AUG_PRESETS = ('recipe', 'small')

PHOTOMETRIC = [dict(type='Brightness', prob=0.5, min_mag=0.8, max_mag=1.2),
               dict(type='Contrast', prob=0.5, min_mag=0.8, max_mag=1.2),
               dict(type='Color', prob=0.5, min_mag=0.8, max_mag=1.2)]
AFFINE = dict(type='RandomApply', prob=0.5, transforms=[dict(
    type='RandomAffine', max_rotate_degree=0.0, max_shear_degree=0.0,
    scaling_ratio_range=(0.75, 1.25), max_translate_ratio=0.1)])
CROP_BRANCH_PROB = 0.7
RESIZE_ONLY_PROB = 0.3
EXTRA_CROP = dict(type='RandomApply', prob=0.5, transforms=[dict(
    type='RandomCrop', crop_type='relative_range', crop_size=(0.6, 0.6),
    allow_negative_crop=True)])


def _index(pipeline: List[dict], kind: str) -> int:
    return next((i for i, t in enumerate(pipeline) if t.get('type') == kind), -1)


def small_data_pipeline(pipeline: List[dict]) -> List[dict]:
    """The ``small`` preset applied to a training pipeline (a new list)."""
    out = copy.deepcopy(list(pipeline))
    at = _index(out, 'LoadAnnotations')
    if at < 0:
        raise ConfigError('--aug small: the training pipeline has no LoadAnnotations step to '
                          'put the augmentation after')
    choice = _index(out, 'RandomChoice')
    if choice >= 0 and len(out[choice].get('transforms', [])) == 2:
        out[choice]['prob'] = [RESIZE_ONLY_PROB, CROP_BRANCH_PROB]
        extra = []
    else:  # no crop branch: crop before the first resize
        extra = [copy.deepcopy(EXTRA_CROP)]
    steps = copy.deepcopy(PHOTOMETRIC) + [copy.deepcopy(AFFINE)] + extra
    return out[:at + 1] + steps + out[at + 1:]


def _train_datasets(cfg) -> List[dict]:
    ds = cfg.train_dataloader.dataset
    found = []
    stack = [ds]
    while stack:
        d = stack.pop()
        if isinstance(d.get('datasets', None), list):
            stack.extend(d.datasets)
        elif isinstance(d.get('dataset', None), dict):
            stack.append(d.dataset)
        else:
            found.append(d)
    return found


def set_augmentation(cfg, preset: str) -> str:
    """Apply ``preset`` to ``cfg``'s training pipeline(s); returns the log line."""
    if preset not in AUG_PRESETS:
        raise ConfigError(f'--aug {preset}: unknown preset; choose one of {AUG_PRESETS}')
    if preset == 'small':
        for ds in _train_datasets(cfg):
            ds.pipeline = small_data_pipeline(ds.pipeline)
    return describe_augmentation(preset)


def describe_augmentation(preset: str) -> str:
    if preset == 'recipe':
        return "augmentation: recipe (the config's training pipeline)"
    return ('augmentation: small (for datasets under ~1,000 images: Brightness/Contrast/'
            'Color 0.8..1.2 each p=0.5, RandomAffine scale 0.75..1.25 translate 0.1 p=0.5, '
            f'the crop branch p={CROP_BRANCH_PROB}, flip p=0.5; datasets/augment.py)')


__all__ = ['AUG_PRESETS', 'small_data_pipeline', 'set_augmentation', 'describe_augmentation']
