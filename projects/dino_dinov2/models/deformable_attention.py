"""Precision handling for mmcv's multi-scale deformable attention.

mmcv's CUDA kernel has float32 and float16 versions only, and its pure-PyTorch fallback
(CPU) calls ``grid_sample`` on ``value`` and float32 sampling grids, which fails when
autocast made ``value`` bfloat16. mmdet builds ``MultiScaleDeformableAttention`` by class
inside its DINO layers, so the fix goes where both paths are looked up: the two
functions of ``mmcv.ops.multi_scale_deform_attn``. Under bfloat16 (and any mixed input)
they now compute in float32 and cast the result back to ``value``'s dtype; float16 keeps
mmcv's native half kernel on the GPU.
"""
from __future__ import annotations

import torch
from mmcv.ops import multi_scale_deform_attn as _msda

_ORIG_FUNCTION = _msda.MultiScaleDeformableAttnFunction
_ORIG_PYTORCH = _msda.multi_scale_deformable_attn_pytorch


def _to_float32(*tensors):
    return [t.float() if torch.is_floating_point(t) else t for t in tensors]


class Float32SafeMSDAFunction(_ORIG_FUNCTION):
    """mmcv's CUDA function; bfloat16 inputs run through the float32 kernel."""

    @classmethod
    def apply(cls, value, spatial_shapes, level_start_index, sampling_locations,
              attention_weights, im2col_step):
        if value.dtype in (torch.float32, torch.float16):
            return _ORIG_FUNCTION.apply(value, spatial_shapes, level_start_index,
                                        sampling_locations, attention_weights, im2col_step)
        dtype = value.dtype
        with torch.autocast(device_type=value.device.type, enabled=False):
            out = _ORIG_FUNCTION.apply(
                *_to_float32(value), spatial_shapes, level_start_index,
                *_to_float32(sampling_locations, attention_weights), im2col_step)
        return out.to(dtype)


def float32_safe_msda_pytorch(value, value_spatial_shapes, sampling_locations,
                              attention_weights):
    """mmcv's pure-PyTorch deformable attention, computed in one dtype.

    Shapes: value (B, S, heads, C/heads), sampling_locations
    (B, Q, heads, levels, points, 2), attention_weights (B, Q, heads, levels, points);
    returns (B, Q, C) in ``value``'s dtype.
    """
    dtype = value.dtype
    if sampling_locations.dtype == dtype and attention_weights.dtype == dtype:
        return _ORIG_PYTORCH(value, value_spatial_shapes, sampling_locations,
                             attention_weights)
    with torch.autocast(device_type=value.device.type, enabled=False):
        out = _ORIG_PYTORCH(*_to_float32(value), value_spatial_shapes,
                            *_to_float32(sampling_locations, attention_weights))
    return out.to(dtype)


def install_float32_safe_msda() -> None:
    """Route mmcv's deformable attention through the dtype-safe versions (idempotent)."""
    _msda.MultiScaleDeformableAttnFunction = Float32SafeMSDAFunction
    _msda.multi_scale_deformable_attn_pytorch = float32_safe_msda_pytorch


install_float32_safe_msda()
