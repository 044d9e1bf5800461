"""ViTDet's simple feature pyramid (Li et al., 2022, "Exploring Plain Vision Transformer
Backbones for Object Detection"), built from one stride-16 ViT map.

mmdet ships it only inside its ``projects/ViTDet`` folder (not part of the installed
package), so it is written here.
"""
from __future__ import annotations

from typing import Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmdet.registry import MODELS
from mmengine.model import BaseModule

from ..errors import ConfigError


@MODELS.register_module()
class LN2d(nn.Module):
    """LayerNorm over the channel dimension of an NCHW tensor."""

    def __init__(self, num_channels: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))
        self.eps = eps
        self.num_channels = num_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # layer_norm over the last dim of NHWC is the fused kernel; same result.
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, (self.num_channels, ), self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


def _scale_stage(in_channels: int, scale: float) -> Tuple[nn.Module, int]:
    """Resampling for one pyramid level; returns the module and its output channels."""
    if scale == 4.0:
        mid = in_channels // 2
        return nn.Sequential(
            nn.ConvTranspose2d(in_channels, mid, 2, stride=2), LN2d(mid), nn.GELU(),
            nn.ConvTranspose2d(mid, in_channels // 4, 2, stride=2)), in_channels // 4
    if scale == 2.0:
        return nn.ConvTranspose2d(in_channels, in_channels // 2, 2, stride=2), in_channels // 2
    if scale == 1.0:
        return nn.Identity(), in_channels
    if scale == 0.5:
        return nn.MaxPool2d(kernel_size=2, stride=2), in_channels
    raise ConfigError(f'SimpleFeaturePyramid: scale factor {scale} not supported '
                      '(use 4.0, 2.0, 1.0 or 0.5)')


@MODELS.register_module()
class SimpleFeaturePyramid(BaseModule):
    """Multi-scale maps from the last map of a plain ViT.

    Args:
        in_channels: channels of the backbone map (ViT embed dim).
        out_channels: channels of every output level.
        scale_factors: resampling of the input map, one output level each.
        top_block: add a level from a stride-2 max-pool of the last one (ViTDet's
            ``LastLevelMaxPool``).
        input_stride: stride of the input map, for :attr:`strides`.
        init_cfg: mmengine init config; None (the default) keeps PyTorch's own
            initialisation of the convolutions, as ViTDet's / the original's pyramid.

    Shapes: input tuple whose last item is (B, in_channels, H, W); outputs
    (B, out_channels, H * s, W * s) per scale s, then (B, out_channels, ceil(H*s_min/2), ...).
    With the defaults: strides 8, 16, 32, 64 from a stride-16 map.
    """

    def __init__(self,
                 in_channels: int = 768,
                 out_channels: int = 256,
                 scale_factors: Sequence[float] = (2.0, 1.0, 0.5),
                 top_block: bool = True,
                 input_stride: int = 16,
                 init_cfg=None) -> None:
        super().__init__(init_cfg=init_cfg)
        self.scale_factors = tuple(float(s) for s in scale_factors)
        self.top_block = top_block
        self.stages = nn.ModuleList()
        for scale in self.scale_factors:
            resample, ch = _scale_stage(in_channels, scale)
            self.stages.append(nn.Sequential(
                resample,
                nn.Conv2d(ch, out_channels, 1, bias=False), LN2d(out_channels),
                nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
                LN2d(out_channels)))
        strides = [int(input_stride / s) for s in self.scale_factors]
        if top_block:
            strides.append(strides[-1] * 2)
        self.strides = tuple(strides)

    def forward(self, inputs: Sequence[torch.Tensor]) -> Tuple[torch.Tensor, ...]:
        x = inputs[-1]
        outs = [stage(x) for stage in self.stages]
        if self.top_block:
            outs.append(F.max_pool2d(outs[-1], kernel_size=1, stride=2))
        return tuple(outs)
