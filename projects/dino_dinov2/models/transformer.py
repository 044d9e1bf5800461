"""DINO's deformable encoder and decoder, built with this project's attention by type.

mmdet's ``DeformableDetrTransformerEncoder`` and ``DinoTransformerDecoder`` build their
layers, and the layers their ``MultiScaleDeformableAttention``, by class: a config cannot
choose the attention's implementation or checkpoint a layer. The classes here are the same
modules (same submodules in the same order, so the same parameters, state-dict keys and
initial values for a seed) built with:

- :class:`.DeformableAttention` in each layer (``impl`` in the attention's config);
- ``checkpoint`` per layer: the layer's activations recomputed in backward
  (``torch.utils.checkpoint``, non-reentrant) instead of stored;
- the feature sizes as Python ints (``host_shapes``, from :class:`.FastDINO`): the
  encoder's reference points from them, and every attention gets them.

Code from mmdet 3.3.0 (``mmdet/models/layers/transformer/deformable_detr_layers.py`` and
``dino_layers.py``): the ``_init_layers`` methods, with the layer classes replaced.
"""
from __future__ import annotations

from typing import List, Tuple

import torch
from mmcv.cnn import build_norm_layer
from mmcv.cnn.bricks.transformer import FFN, MultiheadAttention
from mmdet.models.layers import (DeformableDetrTransformerDecoderLayer,
                                 DeformableDetrTransformerEncoder,
                                 DeformableDetrTransformerEncoderLayer,
                                 DinoTransformerDecoder)
from mmdet.models.layers.transformer.utils import MLP
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint as recompute

from .deformable_attention import DeformableAttention


class _Checkpointed:
    """``forward`` through ``torch.utils.checkpoint`` while training, when ``checkpoint``."""
    checkpoint: bool = False

    def forward(self, *args, **kwargs):
        if self.checkpoint and self.training and torch.is_grad_enabled():
            return recompute(super().forward, *args, use_reentrant=False, **kwargs)
        return super().forward(*args, **kwargs)


class DeformableEncoderLayer(_Checkpointed, DeformableDetrTransformerEncoderLayer):
    """mmdet's deformable encoder layer with :class:`.DeformableAttention` (its config's
    ``impl``) and optional activation checkpointing."""

    def __init__(self, *args, checkpoint: bool = False, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.checkpoint = bool(checkpoint)

    def _init_layers(self) -> None:
        self.self_attn = DeformableAttention(**self.self_attn_cfg)
        self.embed_dims = self.self_attn.embed_dims
        self.ffn = FFN(**self.ffn_cfg)
        self.norms = nn.ModuleList(
            [build_norm_layer(self.norm_cfg, self.embed_dims)[1] for _ in range(2)])


class DeformableDecoderLayer(_Checkpointed, DeformableDetrTransformerDecoderLayer):
    """mmdet's deformable decoder layer with :class:`.DeformableAttention` as its
    cross-attention and optional activation checkpointing."""

    def __init__(self, *args, checkpoint: bool = False, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.checkpoint = bool(checkpoint)

    def _init_layers(self) -> None:
        self.self_attn = MultiheadAttention(**self.self_attn_cfg)
        self.cross_attn = DeformableAttention(**self.cross_attn_cfg)
        self.embed_dims = self.self_attn.embed_dims
        self.ffn = FFN(**self.ffn_cfg)
        self.norms = nn.ModuleList(
            [build_norm_layer(self.norm_cfg, self.embed_dims)[1] for _ in range(3)])


class DeformableEncoder(DeformableDetrTransformerEncoder):
    """mmdet's deformable encoder of :class:`DeformableEncoderLayer` s.

    Args:
        num_layers, layer_cfg: as mmdet's (``layer_cfg.self_attn_cfg.impl`` and
            ``layer_cfg.checkpoint`` reach each layer).
    """

    def _init_layers(self) -> None:
        self.layers = nn.ModuleList(
            [DeformableEncoderLayer(**self.layer_cfg) for _ in range(self.num_layers)])
        self.embed_dims = self.layers[0].embed_dims

    def forward(self, query: Tensor, query_pos: Tensor, key_padding_mask: Tensor,
                spatial_shapes: Tensor, level_start_index: Tensor, valid_ratios: Tensor,
                host_shapes: List[Tuple[int, int]], **kwargs) -> Tensor:
        """mmdet's encoder forward; the reference points from ``host_shapes`` (the levels'
        (h, w) as ints, the values of ``spatial_shapes``). Shapes as mmdet's."""
        reference_points = self.get_encoder_reference_points(host_shapes, valid_ratios,
                                                             device=query.device)
        for layer in self.layers:
            query = layer(query=query, query_pos=query_pos, key_padding_mask=key_padding_mask,
                          spatial_shapes=spatial_shapes, level_start_index=level_start_index,
                          valid_ratios=valid_ratios, reference_points=reference_points,
                          host_shapes=host_shapes, **kwargs)
        return query


class DinoDecoder(DinoTransformerDecoder):
    """mmdet's ``DinoTransformerDecoder`` of :class:`DeformableDecoderLayer` s (same
    arguments; ``host_shapes`` in its forward's kwargs reaches each cross-attention)."""

    def _init_layers(self) -> None:
        self.layers = nn.ModuleList(
            [DeformableDecoderLayer(**self.layer_cfg) for _ in range(self.num_layers)])
        self.embed_dims = self.layers[0].embed_dims
        if self.post_norm_cfg is not None:
            raise ValueError(f'There is not post_norm in {self._get_name()}')
        self.ref_point_head = MLP(self.embed_dims * 2, self.embed_dims, self.embed_dims, 2)
        self.norm = nn.LayerNorm(self.embed_dims)
