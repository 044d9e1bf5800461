"""Multi-scale deformable attention whose implementation is a constructor argument.

mmcv's ``MultiScaleDeformableAttention.forward`` picks its kernel by device (mmcv's CUDA
kernel whenever ``value`` is on a GPU, pure PyTorch otherwise) and has no bfloat16 kernel;
mmdet's DINO layers build it by class. :class:`DeformableAttention` is the same module
(same parameters, state-dict keys and initialisation) whose sampling runs what ``impl``
names; this project's encoder and decoder layers (:mod:`.transformer`) build it by type:

- ``'triton'``: the Triton kernels (:mod:`.triton_deformable_attention`): CUDA tensors,
  or CPU tensors under ``TRITON_INTERPRET=1``; float32, bfloat16, float16, no casts;
- ``'mmcv'``: mmcv's compiled CUDA kernel on a GPU (bfloat16 inputs computed in float32
  and cast back: the kernel has float32 and float16 versions only), PyTorch on the CPU;
- ``'pytorch'``: ``grid_sample`` per level (mmcv's pure-PyTorch formula), as the original
  trained, computed in one dtype (float32 when autocast mixes them);
- ``'onnx'``: the same formula laid out for an exported graph's runtimes (one
  ``GridSample`` per level, the points x queries as the sampled image's rows, levels
  accumulated): what ``tools/export.py`` traces; it runs in eager PyTorch on any device;
- ``'openvino'``: ``'onnx'``'s formula in eager PyTorch, exported as one
  ``dino_dinov2::MSDeformAttn`` node that OpenVINO runs with the project's fused kernel
  (``tools/export.py --deform-attn openvino``; :mod:`..deploy.openvino_ext`);
- ``'auto'``: Triton on a CUDA device, mmcv's kernel where Triton is missing and mmcv has
  CUDA ops, PyTorch on the CPU.

The feature sizes come from the host (``host_shapes``, Python ints): the PyTorch path
splits and reshapes by them without reading the device's ``spatial_shapes`` back (mmcv's
function reads 12 numbers a call). What ``'auto'`` resolved to is logged once per process
and device type.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from mmcv.ops import MultiScaleDeformableAttention
from mmcv.ops.multi_scale_deform_attn import MultiScaleDeformableAttnFunction
from mmengine.logging import print_log

from ..errors import ConfigError

from .triton_deformable_attention import HAS_TRITON, msda_triton

IMPLS = ('auto', 'triton', 'mmcv', 'pytorch', 'onnx', 'openvino')
_REPORTED = set()

HostShapes = Sequence[Tuple[int, int]]


def mmcv_has_cuda_ops() -> bool:
    """Whether this mmcv was compiled with its CUDA ops (a CPU-only build has none)."""
    try:
        from mmcv.ops import get_compiling_cuda_version
        return get_compiling_cuda_version() not in ('not available', '')
    except Exception:  # noqa: BLE001 - no ops at all
        return False


def check_impl(impl: str) -> str:
    if impl not in IMPLS:
        raise ConfigError(f'deform_attn_impl must be one of {IMPLS}, got {impl!r}')
    return impl


def resolve_impl(impl: str, device: torch.device) -> str:
    """The implementation that runs for ``impl`` on ``device`` (see module docstring)."""
    check_impl(impl)
    if impl == 'auto':
        if device.type == 'cuda':
            if HAS_TRITON:
                return 'triton'
            return 'mmcv' if mmcv_has_cuda_ops() else 'pytorch'
        return 'pytorch'
    if impl == 'mmcv' and device.type != 'cuda':
        return 'pytorch'  # mmcv's own choice off the GPU
    return impl


def _sample_pytorch(value, host_shapes: HostShapes, sampling_locations, attention_weights):
    # mmcv 2.1.0's multi_scale_deformable_attn_pytorch (mmcv/ops/multi_scale_deform_attn.py),
    # the level sizes taken as Python ints instead of read from a device tensor
    bs, _, num_heads, embed_dims = value.shape
    _, num_queries, num_heads, num_levels, num_points, _ = sampling_locations.shape
    value_list = value.split([h * w for h, w in host_shapes], dim=1)
    sampling_grids = 2 * sampling_locations - 1
    sampling_value_list = []
    for level, (h, w) in enumerate(host_shapes):
        value_l = value_list[level].flatten(2).transpose(1, 2).reshape(
            bs * num_heads, embed_dims, h, w)
        grid_l = sampling_grids[:, :, :, level].transpose(1, 2).flatten(0, 1)
        sampling_value_list.append(F.grid_sample(
            value_l, grid_l, mode='bilinear', padding_mode='zeros', align_corners=False))
    attention_weights = attention_weights.transpose(1, 2).reshape(
        bs * num_heads, 1, num_queries, num_levels * num_points)
    output = (torch.stack(sampling_value_list, dim=-2).flatten(-2) *
              attention_weights).sum(-1).view(bs, num_heads * embed_dims, num_queries)
    return output.transpose(1, 2).contiguous()


def _sample_onnx(value, host_shapes: HostShapes, sampling_locations, attention_weights):
    """``impl='onnx'``: :func:`_sample_pytorch`'s formula laid out for the runtimes of an
    exported graph. Each level's grid is (B*heads, points, queries, 2), so the weighted
    sum over points runs over an outer axis with the queries contiguous, and the levels
    accumulate instead of being stacked (no Concat of four sampled tensors). The same
    products summed in another order (within 1e-6 of mmcv's); measured on a 2-core CPU
    at the recipe's 512x512 shapes (docs/deploy.md#deformable-attention-in-the-graph).
    """
    bs, _, num_heads, embed_dims = value.shape
    _, num_queries, _, num_levels, num_points, _ = sampling_locations.shape
    value = value.permute(0, 2, 3, 1).reshape(bs * num_heads, embed_dims, -1)
    grids = (2 * sampling_locations - 1).permute(0, 2, 3, 4, 1, 5).reshape(
        bs * num_heads, num_levels, num_points, num_queries, 2)
    weights = attention_weights.permute(0, 2, 3, 4, 1).reshape(
        bs * num_heads, 1, num_levels, num_points, num_queries)
    output, start = None, 0
    for level, (h, w) in enumerate(host_shapes):
        value_l = value[..., start:start + h * w].reshape(bs * num_heads, embed_dims, h, w)
        sampled = F.grid_sample(value_l, grids[:, level], mode='bilinear',
                                padding_mode='zeros', align_corners=False)
        part = (sampled * weights[:, :, level]).sum(2)  # (B*heads, C/heads, queries)
        output = part if output is None else output + part
        start += h * w
    return output.view(bs, num_heads * embed_dims, num_queries).transpose(1, 2).contiguous()


def msda_pytorch(value, host_shapes: HostShapes, sampling_locations, attention_weights,
                 layout: str = 'mmcv'):
    """The PyTorch deformable sampling, computed in one dtype (float32 when the inputs'
    dtypes differ, as under bfloat16 autocast) and returned in ``value``'s; ``layout``
    ``'mmcv'`` (:func:`_sample_pytorch`) or ``'onnx'`` (:func:`_sample_onnx`).

    Shapes: value (B, S, heads, C/heads), ``host_shapes`` the levels' (H, W) as ints,
    sampling_locations (B, Q, heads, levels, points, 2), attention_weights
    (B, Q, heads, levels, points); returns (B, Q, C).
    """
    dtype = value.dtype
    sample = _sample_onnx if layout == 'onnx' else _sample_pytorch
    if sampling_locations.dtype == attention_weights.dtype == dtype:
        return sample(value, host_shapes, sampling_locations, attention_weights)
    with torch.autocast(device_type=value.device.type, enabled=False):
        out = sample(value.float(), host_shapes, sampling_locations.float(),
                     attention_weights.float())
    return out.to(dtype)


class OpenVinoSampling(torch.autograd.Function):
    """``impl='openvino'``: :func:`msda_pytorch` (``'onnx'`` layout) when run, one
    ``dino_dinov2::MSDeformAttn`` node (attribute ``spatial_shapes``: h0 w0 h1 w1 ...)
    when exported; OpenVINO runs it with ``deploy/openvino_ext/msda.cpp``."""

    @staticmethod
    def forward(ctx, value, sampling_locations, attention_weights, host_shapes):
        return msda_pytorch(value, host_shapes, sampling_locations, attention_weights,
                            layout='onnx')

    @staticmethod
    def symbolic(g, value, sampling_locations, attention_weights, host_shapes):
        return g.op('dino_dinov2::MSDeformAttn', value, sampling_locations,
                    attention_weights,
                    spatial_shapes_i=[int(x) for hw in host_shapes for x in hw])


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


class DeformableAttention(MultiScaleDeformableAttention):
    """``MultiScaleDeformableAttention`` whose sampling runs the implementation ``impl``.

    Args:
        impl: ``'auto'``, ``'triton'``, ``'mmcv'``, ``'pytorch'``, ``'onnx'`` or
            ``'openvino'`` (module docstring).
        *args, **kwargs: mmcv's ``MultiScaleDeformableAttention`` arguments.

    Shapes as mmcv's: query (Q, B, C) or (B, Q, C) with ``batch_first``; value likewise
    with ``sum(h_l * w_l)`` keys; reference_points (B, Q, levels, 2 or 4) normalised;
    ``host_shapes`` the levels' (h, w) as Python ints (read from ``spatial_shapes`` once
    when not given).
    """

    def __init__(self, *args, impl: str = 'auto', **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.impl = check_impl(impl)

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
                host_shapes: Optional[List[Tuple[int, int]]] = None,
                **kwargs) -> torch.Tensor:
        # mmcv 2.1.0's MultiScaleDeformableAttention.forward, the kernel choice taken out
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
                             attention_weights, host_shapes)
        output = self.output_proj(output)
        if not self.batch_first:
            output = output.permute(1, 0, 2)
        return self.dropout(output) + identity

    def sample(self, value, spatial_shapes, level_start_index, sampling_locations,
               attention_weights, host_shapes=None) -> torch.Tensor:
        """The deformable sampling, (B, Q, C), by the implementation ``impl`` resolves to."""
        resolved = resolve_impl(self.impl, value.device)
        _report(self.impl, resolved, value.device)
        if resolved == 'triton':
            return msda_triton(value, spatial_shapes, level_start_index, sampling_locations,
                               attention_weights)
        if resolved == 'mmcv':
            return msda_mmcv(value, spatial_shapes, level_start_index, sampling_locations,
                             attention_weights, self.im2col_step)
        if host_shapes is None:
            host_shapes = [tuple(hw) for hw in spatial_shapes.tolist()]
        if resolved == 'openvino':
            return OpenVinoSampling.apply(value, sampling_locations, attention_weights,
                                          tuple(tuple(int(x) for x in hw)
                                                for hw in host_shapes))
        return msda_pytorch(value, host_shapes, sampling_locations, attention_weights,
                            layout='onnx' if resolved == 'onnx' else 'mmcv')
