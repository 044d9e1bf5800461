"""Multi-scale deformable attention with the implementation chosen in the config.

mmcv's ``MultiScaleDeformableAttention.forward`` picks its kernel by device (mmcv's CUDA
kernel whenever ``value`` is on a GPU, pure PyTorch otherwise), has no bfloat16 kernel,
and mmdet's DINO layers build the module by class, so a config cannot name another one.
:func:`use_deformable_attention` re-classes the built modules as
:class:`SwitchableMultiScaleDeformableAttention`: the same parameters and state-dict keys,
mmcv 2.1.0's forward, and the sampling done by the implementation its ``impl`` names:

- ``'triton'``: the Triton kernels (:mod:`.triton_deformable_attention`): CUDA tensors,
  or CPU tensors under ``TRITON_INTERPRET=1``; float32, bfloat16, float16, no casts;
- ``'mmcv'``: mmcv's compiled CUDA kernel on a GPU (bfloat16 inputs computed in float32
  and cast back: the kernel has float32 and float16 versions only), its pure-PyTorch path
  on the CPU;
- ``'pytorch'``: mmcv's pure-PyTorch path (``grid_sample``) on every device, as the
  original trained (computed in one dtype: float32 when autocast mixes them);
- ``'auto'``: Triton on a CUDA device, mmcv's kernel where Triton is missing and mmcv has
  CUDA ops, PyTorch on the CPU.

What ``'auto'`` resolved to is logged once per process and device type. Nothing in mmcv
is patched: importing this package changes no other code's deformable attention.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
from mmcv.ops import MultiScaleDeformableAttention
from mmcv.ops.multi_scale_deform_attn import (MultiScaleDeformableAttnFunction,
                                              multi_scale_deformable_attn_pytorch)
from mmengine.logging import print_log

from ..errors import ConfigError

from .triton_deformable_attention import HAS_TRITON, msda_triton

IMPLS = ('auto', 'triton', 'mmcv', 'pytorch')
_REPORTED = set()


def mmcv_has_cuda_ops() -> bool:
    """Whether this mmcv was compiled with its CUDA ops (a CPU-only build has none)."""
    try:
        from mmcv.ops import get_compiling_cuda_version
        return get_compiling_cuda_version() not in ('not available', '')
    except Exception:  # noqa: BLE001 - no ops at all
        return False


def resolve_impl(impl: str, device: torch.device) -> str:
    """The implementation that runs for ``impl`` on ``device`` (see module docstring)."""
    if impl not in IMPLS:
        raise ConfigError(f'deform_attn_impl must be one of {IMPLS}, got {impl!r}')
    if impl == 'auto':
        if device.type == 'cuda':
            if HAS_TRITON:
                return 'triton'
            return 'mmcv' if mmcv_has_cuda_ops() else 'pytorch'
        return 'pytorch'
    if impl == 'mmcv' and device.type != 'cuda':
        return 'pytorch'  # mmcv's own choice off the GPU
    return impl


def _one_dtype(*tensors):
    dtype = tensors[0].dtype
    if all(t.dtype == dtype for t in tensors):
        return tensors, None
    return [t.float() for t in tensors], dtype


def msda_pytorch(value, spatial_shapes, sampling_locations, attention_weights):
    """mmcv's pure-PyTorch deformable attention, computed in one dtype (float32 when the
    inputs' dtypes differ, as under bfloat16 autocast) and returned in ``value``'s.

    Shapes: value (B, S, heads, C/heads), sampling_locations
    (B, Q, heads, levels, points, 2), attention_weights (B, Q, heads, levels, points);
    returns (B, Q, C).
    """
    (value_, loc, weights), dtype = _one_dtype(value, sampling_locations, attention_weights)
    if dtype is None:
        return multi_scale_deformable_attn_pytorch(value_, spatial_shapes, loc, weights)
    with torch.autocast(device_type=value.device.type, enabled=False):
        out = multi_scale_deformable_attn_pytorch(value_, spatial_shapes, loc, weights)
    return out.to(value.dtype)


def msda_mmcv(value, spatial_shapes, level_start_index, sampling_locations,
              attention_weights, im2col_step: int = 64):
    """mmcv's CUDA kernel; bfloat16 (or mixed) inputs run through its float32 version."""
    if value.dtype in (torch.float32, torch.float16) and \
            sampling_locations.dtype == attention_weights.dtype == value.dtype:
        return MultiScaleDeformableAttnFunction.apply(
            value, spatial_shapes, level_start_index, sampling_locations, attention_weights,
            im2col_step)
    with torch.autocast(device_type=value.device.type, enabled=False):
        out = MultiScaleDeformableAttnFunction.apply(
            value.float(), spatial_shapes, level_start_index, sampling_locations.float(),
            attention_weights.float(), im2col_step)
    return out.to(value.dtype)


def _report(impl: str, resolved: str, device: torch.device) -> None:
    key = (impl, resolved, device.type)
    if key not in _REPORTED:
        _REPORTED.add(key)
        how = '' if impl == resolved else f" for deform_attn_impl='{impl}'"
        print_log(f'deformable attention: {resolved}{how} on {device.type}', logger='current')


class SwitchableMultiScaleDeformableAttention(MultiScaleDeformableAttention):
    """``MultiScaleDeformableAttention`` whose sampling runs the implementation ``impl``.

    Shapes as mmcv's: query (Q, B, C) or (B, Q, C) with ``batch_first``; value likewise
    with ``sum(h_l * w_l)`` keys; reference_points (B, Q, levels, 2 or 4) normalised.
    """
    impl: str = 'auto'

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
        # mmcv 2.1.0's forward, with the kernel choice taken out
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
            raise ValueError('deformable attention: the last dim of reference_points must '
                             f'be 2 or 4, got {reference_points.shape[-1]}')
        output = self.sample(value, spatial_shapes, level_start_index, sampling_locations,
                             attention_weights)
        output = self.output_proj(output)
        if not self.batch_first:
            output = output.permute(1, 0, 2)
        return self.dropout(output) + identity

    def sample(self, value, spatial_shapes, level_start_index, sampling_locations,
               attention_weights) -> torch.Tensor:
        """The deformable sampling, (B, Q, C), by the implementation ``impl`` resolves to."""
        resolved = resolve_impl(self.impl, value.device)
        _report(self.impl, resolved, value.device)
        if resolved == 'triton':
            return msda_triton(value, spatial_shapes, level_start_index, sampling_locations,
                               attention_weights)
        if resolved == 'mmcv':
            return msda_mmcv(value, spatial_shapes, level_start_index, sampling_locations,
                             attention_weights, self.im2col_step)
        return msda_pytorch(value, spatial_shapes, sampling_locations, attention_weights)


def use_deformable_attention(model: nn.Module, impl: str = 'auto') -> int:
    """Make every mmcv deformable attention in ``model`` run ``impl``.

    Returns how many modules were switched (0 means the model has none: a config mistake
    the caller should report).
    """
    resolve_impl(impl, torch.device('cpu'))  # validates the name
    count = 0
    for m in model.modules():
        if isinstance(m, MultiScaleDeformableAttention):
            m.__class__ = SwitchableMultiScaleDeformableAttention
            m.impl = impl
            count += 1
    return count
