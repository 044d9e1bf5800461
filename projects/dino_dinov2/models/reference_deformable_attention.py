"""The original's deformable attention: mmcv's pure-PyTorch path, on any device.

mmcv's ``MultiScaleDeformableAttention.forward`` picks the kernel by device (its CUDA
kernel whenever ``value`` is on a GPU) and has no switch to run the pure-PyTorch
version there, and mmdet's DINO layers build the module by class, so a config cannot
name another type. :func:`use_reference_deformable_attention` therefore re-classes
built modules as :class:`ReferenceMultiScaleDeformableAttention`: same parameters and
state-dict keys, the forward below (mmcv 2.1.0's, with the kernel choice removed).

This is what "original-equivalent mode" measures against; it is slower and keeps
``grid_sample``'s intermediates for backward.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
from mmcv.ops import MultiScaleDeformableAttention
from mmcv.ops import multi_scale_deform_attn as _msda


class ReferenceMultiScaleDeformableAttention(MultiScaleDeformableAttention):
    """``MultiScaleDeformableAttention`` that always runs the pure-PyTorch sampling.

    Shapes as mmcv's: query (Q, B, C) or (B, Q, C) with ``batch_first``; value likewise
    with ``sum(h_l * w_l)`` keys; reference_points (B, Q, levels, 2 or 4) normalised.
    """

    def forward(self,
                query: torch.Tensor,
                key: Optional[torch.Tensor] = None,
                value: Optional[torch.Tensor] = None,
                identity: Optional[torch.Tensor] = None,
                query_pos: Optional[torch.Tensor] = None,
                key_padding_mask: Optional[torch.Tensor] = None,
                reference_points: Optional[torch.Tensor] = None,
                spatial_shapes: Optional[torch.Tensor] = None,
                level_start_index: Optional[torch.Tensor] = None,
                **kwargs) -> torch.Tensor:
        if value is None:
            value = query
        if identity is None:
            identity = query
        if query_pos is not None:
            query = query + query_pos
        if not self.batch_first:
            query = query.permute(1, 0, 2)
            value = value.permute(1, 0, 2)

        bs, num_query, _ = query.shape
        bs, num_value, _ = value.shape
        value = self.value_proj(value)
        if key_padding_mask is not None:
            value = value.masked_fill(key_padding_mask[..., None], 0.0)
        value = value.view(bs, num_value, self.num_heads, -1)
        sampling_offsets = self.sampling_offsets(query).view(
            bs, num_query, self.num_heads, self.num_levels, self.num_points, 2)
        attention_weights = self.attention_weights(query).view(
            bs, num_query, self.num_heads, self.num_levels * self.num_points)
        attention_weights = attention_weights.softmax(-1).view(
            bs, num_query, self.num_heads, self.num_levels, self.num_points)
        if reference_points.shape[-1] == 2:
            offset_normalizer = torch.stack(
                [spatial_shapes[..., 1], spatial_shapes[..., 0]], -1)
            sampling_locations = reference_points[:, :, None, :, None, :] \
                + sampling_offsets / offset_normalizer[None, None, None, :, None, :]
        elif reference_points.shape[-1] == 4:
            sampling_locations = reference_points[:, :, None, :, None, :2] \
                + sampling_offsets / self.num_points \
                * reference_points[:, :, None, :, None, 2:] * 0.5
        else:
            raise ValueError('ReferenceMultiScaleDeformableAttention: the last dim of '
                             f'reference_points must be 2 or 4, got '
                             f'{reference_points.shape[-1]}')
        # Looked up at call time: the float32-safe version this package installs.
        output = _msda.multi_scale_deformable_attn_pytorch(
            value, spatial_shapes, sampling_locations, attention_weights)
        output = self.output_proj(output)
        if not self.batch_first:
            output = output.permute(1, 0, 2)
        return self.dropout(output) + identity


def use_reference_deformable_attention(model: nn.Module) -> int:
    """Switch every mmcv deformable attention in ``model`` to the pure-PyTorch path.

    Returns how many modules were switched (0 means the model has none: a config
    mistake the caller should report).
    """
    count = 0
    for m in model.modules():
        if type(m) is MultiScaleDeformableAttention:
            m.__class__ = ReferenceMultiScaleDeformableAttention
            count += 1
        elif isinstance(m, ReferenceMultiScaleDeformableAttention):
            count += 1
    return count
