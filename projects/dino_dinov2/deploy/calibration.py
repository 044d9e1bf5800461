"""The images an INT8 graph is calibrated on (``tools/export.py --int8 --calib SOURCE``).

``SOURCE`` is a folder of images (searched recursively: .jpg .jpeg .png .bmp .tif .tiff
.webp) or a dataset in any layout ``--data-root`` takes (COCO 2017, one folder per split,
YOLO ``data.yaml``), whose training images are used. ``--calib-images N`` (default 300)
are taken evenly across the sorted list, so the same folder gives the same set. Every
image goes through the letterbox of inference (:mod:`.letterbox`), so the ranges are those
the deployed graph sees.

Bad input is known before the export starts: a missing source, a folder without images,
no readable image (one line each); unreadable files among readable ones are skipped with
a warning naming them; fewer images than asked, and fewer than 100, are warnings.
"""
from __future__ import annotations

import os
import os.path as osp
from typing import Iterator, List, Sequence

import numpy as np

from .inference import IMAGE_EXTENSIONS
from .letterbox import ImageError, letterbox, read_image
from .onnx_export import ExportError
RECOMMENDED = 100  # fewer calibration images than this: a warning


class CalibrationError(ExportError):
    """Calibration images that cannot be used (missing, none, none readable)."""


def _warn(message: str) -> None:
    import logging

    from mmengine.logging import print_log
    print_log(message, logger='current', level=logging.WARNING)


def _images_under(folder: str) -> List[str]:
    found = []
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        found += [osp.join(root, f) for f in sorted(files)
                  if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith('.')]
    return found


def _source_images(source: str) -> List[str]:
    """Every image of ``source`` (a folder, or a dataset's training split)."""
    from ..datasets.errors import DatasetError
    from ..datasets.layout import find_layout
    from ..datasets.yolo import is_yolo_yaml
    if not osp.exists(source):
        raise CalibrationError(f'--calib {source}: not found (give a folder of images or a '
                               'dataset root)')
    if osp.isfile(source) and not is_yolo_yaml(source):
        raise CalibrationError(f'--calib {source}: a file; give a folder of images or a '
                               'dataset root (or its data.yaml)')
    try:
        layout = find_layout(source)
    except DatasetError:
        layout = None  # not a dataset: a plain folder of images
    folder = layout.splits['train'].img_dir if layout is not None else source
    images = _images_under(folder)
    if not images:
        raise CalibrationError(f'--calib {source}: no images ({", ".join(IMAGE_EXTENSIONS)}) '
                               f'in {folder}')
    return images


def choose(images: Sequence[str], count: int) -> List[str]:
    """``count`` images spread evenly over the sorted list (all of them when fewer)."""
    if count >= len(images):
        return list(images)
    return [images[(i * len(images)) // count] for i in range(count)]


def calibration_images(source: str, count: int = 300) -> List[str]:
    """The readable images to calibrate on (module docstring); warnings for skipped files
    and small sets."""
    if count < 1:
        raise CalibrationError(f'--calib-images {count}: must be at least 1')
    found = _source_images(source)
    chosen = choose(found, count)
    readable, bad = [], []
    for path in chosen:
        try:
            read_image(path)
            readable.append(path)
        except ImageError as e:
            bad.append(str(e))
    if not readable:
        raise CalibrationError(f'--calib {source}: none of its {len(chosen)} images can be '
                               f'read ({bad[0]})')
    if bad:
        _warn(f'calibration: skipped {len(bad)} unreadable image(s): ' + '; '.join(bad[:3])
              + (' ...' if len(bad) > 3 else ''))
    if len(readable) < count:
        _warn(f'calibration: {len(readable)} images, fewer than the {count} asked '
              f'(--calib-images)')
    if len(readable) < RECOMMENDED:
        n = len(readable)
        _warn(f'calibration: only {n} image{"s" if n != 1 else ""}; with fewer than '
              f'{RECOMMENDED} the ranges may miss what the deployed model sees')
    return readable


def letterboxed(paths: Sequence[str], height: int, width: int, pad_value: Sequence[float],
                batch: int = 1) -> Iterator[np.ndarray]:
    """Each image as the graph's input (1 or ``batch`` copies, float32 RGB 0-255)."""
    for path in paths:
        x, _ = letterbox(read_image(path), height, width, pad_value)
        array = x[None].numpy()
        yield np.repeat(array, batch, axis=0) if batch > 1 else array
