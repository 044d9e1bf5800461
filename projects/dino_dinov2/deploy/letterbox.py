"""How an image of any size enters a fixed-size exported graph, and how boxes come back.

The rule the sidecar (``model.json``) states: keep the aspect ratio and fit the image
inside height x width (mmcv's rounding: ``int(side * scale + 0.5)``), resize with Pillow's
bilinear (the recipe's test pipeline resizes so), pad bottom and right with the mean colour
(0 once normalized, as the training batches' padding). Boxes come back by dividing by the
per-axis scale and clipping to the image.
"""
from __future__ import annotations

from typing import Sequence, Tuple, Union

import numpy as np
import torch

from ..errors import UserError


class ImageError(UserError, ValueError):
    """An image that cannot be read."""


class ImageNotFoundError(ImageError, FileNotFoundError):
    """An image path (or a folder of images) that is not there."""


def read_image(image: Union[str, np.ndarray, 'object']) -> np.ndarray:
    """(H, W, 3) uint8 RGB from a path, an RGB array or a PIL image."""
    if isinstance(image, str):
        from PIL import Image, UnidentifiedImageError
        try:
            with Image.open(image) as im:
                from PIL import ImageOps
                return np.asarray(ImageOps.exif_transpose(im).convert('RGB'))
        except FileNotFoundError:
            raise ImageError(f'image not found: {image}') from None
        except (UnidentifiedImageError, OSError) as e:
            raise ImageError(f'{image} cannot be read as an image ({e})') from None
    if hasattr(image, 'convert') and hasattr(image, 'size'):  # PIL
        return np.asarray(image.convert('RGB'))
    array = np.asarray(image)
    if array.ndim == 2:
        array = np.stack([array] * 3, -1)
    if array.ndim != 3 or array.shape[2] not in (3, 4):
        raise ImageError(f'an image array must be H x W x 3 (RGB), got shape {array.shape}')
    array = array[..., :3]
    if array.dtype != np.uint8:
        array = np.clip(array, 0, 255).astype(np.uint8)
    return array


def letterbox(image: np.ndarray, height: int, width: int,
              pad_value: Sequence[float]) -> Tuple[torch.Tensor, Tuple[float, float]]:
    """(3, height, width) float32 RGB 0-255 and the (x, y) scale from the image to it."""
    import mmcv
    h, w = image.shape[:2]
    scale = min(height / h, width / w)
    new_w, new_h = int(w * scale + 0.5), int(h * scale + 0.5)
    new_w, new_h = min(max(new_w, 1), width), min(max(new_h, 1), height)
    resized = mmcv.imresize(image, (new_w, new_h), interpolation='bilinear',
                            backend='pillow')
    canvas = torch.empty(3, height, width, dtype=torch.float32)
    canvas[:] = torch.tensor(pad_value, dtype=torch.float32).view(3, 1, 1)
    canvas[:, :new_h, :new_w] = torch.from_numpy(np.ascontiguousarray(resized)).permute(
        2, 0, 1).float()
    return canvas, (new_w / w, new_h / h)


def boxes_back(boxes: np.ndarray, scale: Tuple[float, float], image_hw) -> np.ndarray:
    """Boxes in the letterboxed input's pixels -> the image's, clipped to it."""
    sx, sy = scale
    out = boxes / np.array([sx, sy, sx, sy], dtype=np.float32)
    h, w = image_hw
    out[:, 0::2] = out[:, 0::2].clip(0, w)
    out[:, 1::2] = out[:, 1::2].clip(0, h)
    return out
