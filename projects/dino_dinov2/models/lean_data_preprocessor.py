"""mmdet's ``DetDataPreprocessor`` without host round trips in the batch it builds.

mmengine's image preprocessor swaps the channels with a Python index list (a host tensor
copied to the device for every image) and pads with ``stack_batch``, which computes the
padding from host tensors of the shapes (``torch.Tensor(shapes)``, ``.sum() == 0``,
``.tolist()``). The ground truth reaches the device field by field (boxes and labels of
every image: two pageable copies each). :class:`LeanDetDataPreprocessor` computes the same
batch with the channel flip as ``flip``, the padding from Python ints, and, on a GPU, the
ground truth of the whole batch in one pinned, non-blocking copy per dtype, and the images
pinned (already, from a loader with ``pin_memory=True``) and copied non-blocking.
"""
from __future__ import annotations

from typing import List

import torch
import torch.nn.functional as F
from mmdet.models.data_preprocessors import DetDataPreprocessor
from mmdet.registry import MODELS
from mmdet.structures.bbox import BaseBoxes
from mmdet.models.utils.misc import samplelist_boxtype2tensor
from mmengine.utils import is_seq_of

from .host_data import host_to_device

_INSTANCE_FIELDS = ('gt_instances', 'ignored_instances')


@MODELS.register_module()
class LeanDetDataPreprocessor(DetDataPreprocessor):
    """``DetDataPreprocessor`` (same arguments, same outputs) for lists of images (what
    ``pseudo_collate`` makes); a batch tensor goes through mmdet's path."""

    def forward(self, data: dict, training: bool = False) -> dict:
        if not is_seq_of(data['inputs'], torch.Tensor) or self.pad_mask or self.pad_seg:
            return super().forward(data, training)
        batch_pad_shape = self._get_pad_shape(data)
        data_samples = data.get('data_samples', None)
        if data_samples is not None:
            data_samples = self._samples_to_device(data_samples)
        images = []
        for image in data['inputs']:
            image = host_to_device(image, torch.device(self.device))  # pinned, non-blocking
            if self._channel_conversion and image.shape[0] == 3:
                image = image.flip(0)  # = image[[2, 1, 0], ...]
            image = image.float()
            if self._enable_normalize:
                if self.mean.shape[0] == 3 and not (image.dim() == 3 and image.shape[0] == 3):
                    raise ValueError('If the mean has 3 values, the input tensor should in '
                                     f'shape of (3, H, W), but got the tensor with shape '
                                     f'{image.shape}')
                image = (image - self.mean) / self.std
            images.append(image)
        inputs = self._stack(images)
        if data_samples is not None:
            batch_input_shape = tuple(inputs[0].size()[-2:])
            for data_sample, pad_shape in zip(data_samples, batch_pad_shape):
                data_sample.set_metainfo({'batch_input_shape': batch_input_shape,
                                          'pad_shape': pad_shape})
            if self.boxtype2tensor:
                samplelist_boxtype2tensor(data_samples)
        if training and self.batch_augments is not None:
            for batch_aug in self.batch_augments:
                inputs, data_samples = batch_aug(inputs, data_samples)
        return {'inputs': inputs, 'data_samples': data_samples}

    def _stack(self, images: List[torch.Tensor]) -> torch.Tensor:
        """mmengine's ``stack_batch`` (pad right and bottom to the largest size, rounded
        up to ``pad_size_divisor``) from the shapes as Python ints."""
        d = self.pad_size_divisor
        height = -(-max(im.shape[-2] for im in images) // d) * d
        width = -(-max(im.shape[-1] for im in images) // d) * d
        if all(im.shape[-2:] == (height, width) for im in images):
            return torch.stack(images)
        return torch.stack([F.pad(im, (0, width - im.shape[-1], 0, height - im.shape[-2]),
                                  value=self.pad_value) for im in images])

    def _samples_to_device(self, data_samples: list) -> list:
        """The data samples on the device, their instance tensors in one pinned,
        non-blocking copy per dtype."""
        slots = []  # (instances, key, boxes type or None, host tensor)
        for sample in data_samples:
            for field in _INSTANCE_FIELDS:
                if field not in sample:
                    continue
                instances = sample.get(field)
                for key, value in instances.items():
                    boxes_type = type(value) if isinstance(value, BaseBoxes) else None
                    tensor = value.tensor if boxes_type else value
                    if torch.is_tensor(tensor) and tensor.device.type == 'cpu':
                        slots.append((instances, key, boxes_type, tensor))
        by_dtype = {}
        for slot in slots:
            by_dtype.setdefault(slot[3].dtype, []).append(slot)
        for dtype, group in by_dtype.items():
            flat = torch.cat([s[3].reshape(-1) for s in group])
            moved = host_to_device(flat, torch.device(self.device))
            for (instances, key, boxes_type, host), part in zip(
                    group, moved.split([s[3].numel() for s in group])):
                part = part.view(host.shape)
                instances.set_field(boxes_type(part) if boxes_type else part, key)
        return [s.to(self.device) for s in data_samples]  # what is left (no tensors: free)
