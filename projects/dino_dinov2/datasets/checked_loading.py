"""Image loading that names the file at fault and always gives 3-channel images.

Why not mmcv's ``LoadImageFromFile`` as is: a missing file fails with a bare
``FileNotFoundError`` traceback from the file backend and a corrupt one with
``AssertionError: failed to load image`` (with the pillow backend, a PIL error that
does not name the file); its ``ignore_empty`` skips missing files silently but not
corrupt ones. With ``color_type='color'`` (the default) both decoders already turn
grayscale, palette, 16-bit and RGBA files into 3-channel 8-bit BGR (checked in
``tests/datasets/test_checked_loading.py``); any other ``color_type`` is made 3-channel
here, since the detector needs three.
"""
from __future__ import annotations

import logging
import os.path as osp

import numpy as np
from mmcv.transforms import LoadImageFromFile
from mmdet.registry import TRANSFORMS
from mmengine.logging import print_log

from ..errors import first_line
from .errors import ImageFileError


def to_three_channels(img: np.ndarray) -> np.ndarray:
    """(H, W), (H, W, 1) -> gray repeated; (H, W, 4) -> alpha dropped; (H, W, 3) as is."""
    if img.ndim == 2:
        img = img[:, :, None]
    if img.shape[2] == 1:
        return np.repeat(img, 3, axis=2)
    if img.shape[2] == 4:
        return np.ascontiguousarray(img[:, :, :3])
    return img


@TRANSFORMS.register_module()
class CheckedLoadImageFromFile(LoadImageFromFile):
    """``LoadImageFromFile`` with one-line errors and an opt-in skip of bad images.

    Args:
        skip_bad: instead of raising :class:`ImageFileError`, log a warning (once per
            file and process) and return None; a training dataset then draws another
            image (mmengine's refetch), a test-mode ``CheckedCocoDataset`` raises.
            mmcv's ``ignore_empty=True`` means the same here.
        **kwargs: ``LoadImageFromFile`` arguments.
    """

    def __init__(self, *args, skip_bad: bool = False, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.skip_bad = skip_bad or self.ignore_empty
        self.ignore_empty = False  # the parent must raise: the problem is reported here
        self._warned = set()

    def transform(self, results: dict):
        filename = results['img_path']
        if isinstance(filename, str) and '://' not in filename and osp.isfile(filename) \
                and osp.getsize(filename) == 0:
            return self._bad(filename, 'image file is empty (0 bytes)')
        try:
            results = super().transform(results)
        except FileNotFoundError:
            return self._bad(filename, 'image file not found')
        except Exception as e:  # noqa: BLE001 - decoders raise many types; named below
            detail = first_line(e, '')
            if isinstance(e, AssertionError) and 'failed to load image' in detail:
                detail = ''
            problem = 'cannot decode the image (corrupt, truncated or not an image'
            problem += f': {type(e).__name__}: {detail})' if detail else ')'
            return self._bad(filename, problem)
        results['img'] = to_three_channels(results['img'])
        return results

    def _bad(self, filename: str, problem: str):
        if not self.skip_bad:
            raise ImageFileError(f'{filename}: {problem}')
        if filename not in self._warned:
            self._warned.add(filename)
            print_log(f'skipping image {filename}: {problem} (skip_bad=True)',
                      logger='current', level=logging.WARNING)
        return None

    def __repr__(self) -> str:
        return super().__repr__()[:-1] + f', skip_bad={self.skip_bad})'
