"""mmdet's DINO detector with its execution choices in the config and its step on the host's
numbers.

mmdet's ``DINO`` builds its encoder, decoder and denoising-query generator by class and
offers no switch for how they run. ``FastDINO`` is the same model (same parameters,
state-dict keys, initial values for a seed, losses) built from this project's parts:

- the encoder and decoder of :mod:`.transformer`, whose deformable attention runs
  ``deform_attn_impl`` (``'triton'``, ``'mmcv'``, ``'pytorch'`` or ``'auto'``: Triton on a
  GPU, mmcv's CUDA kernel where Triton is missing, PyTorch on the CPU; the log says which
  ran) and whose layers are checkpointed with ``checkpoint_encoder`` /
  ``checkpoint_decoder`` (less memory, one more forward of those layers per step);
- :class:`.LeanCdnQueryGenerator` for the denoising queries (placed from the host's box
  counts, no device reads).

The feature sizes stay Python ints from the feature maps' shapes (``host_shapes``): they
reach the device once, in one pinned copy with the level starts, and the encoder's
reference points, the proposals' grids and the PyTorch deformable sampling are computed
from the ints. mmdet's code loops over the values of the device tensor instead (16 host
reads a step, and a host-to-device copy per level). The values are the same.
The path of a batch through it: docs/architecture.md.
"""
from __future__ import annotations

import copy
import logging
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from mmdet.models.detectors import DINO, DeformableDETR
from mmdet.models.layers import SinePositionalEncoding
from mmdet.registry import MODELS
from mmengine.logging import print_log
from torch import Tensor, nn

from ..errors import ConfigError

from .deformable_attention import check_impl
from .host_data import host_to_device
from .lean_denoising import LeanCdnQueryGenerator
from .lean_losses import PackedLogVars, PackedLosses
from .transformer import DeformableEncoder, DinoDecoder

HostShapes = List[Tuple[int, int]]


def _with_layer_options(cfg: dict, attn_key: str, impl: str, checkpoint: bool) -> dict:
    """An encoder/decoder config whose layers get ``checkpoint`` and whose deformable
    attention (``layer_cfg[attn_key]``) gets ``impl``."""
    cfg = copy.deepcopy(dict(cfg))
    layer_cfg = dict(cfg.get('layer_cfg', {}))
    layer_cfg[attn_key] = dict(layer_cfg.get(attn_key, {}), impl=impl)
    layer_cfg['checkpoint'] = bool(checkpoint)
    cfg['layer_cfg'] = layer_cfg
    return cfg


@MODELS.register_module()
class FastDINO(DINO):
    """DINO with a selectable deformable-attention path and optional checkpointing.

    Args:
        deform_attn_impl: ``'auto'``, ``'triton'``, ``'mmcv'`` or ``'pytorch'`` (the
            original's pure-PyTorch path on every device).
        checkpoint_encoder: recompute encoder layer activations in backward.
        checkpoint_decoder: recompute decoder layer activations in backward.
        encoder, decoder, dn_cfg, *args, **kwargs: mmdet ``DINO``'s arguments.
    """

    def __init__(self, *args, encoder: dict, decoder: dict, dn_cfg: dict,
                 deform_attn_impl: str = 'auto', checkpoint_encoder: bool = False,
                 checkpoint_decoder: bool = False, **kwargs) -> None:
        check_impl(deform_attn_impl)
        encoder = _with_layer_options(encoder, 'self_attn_cfg', deform_attn_impl,
                                      checkpoint_encoder)
        decoder = _with_layer_options(decoder, 'cross_attn_cfg', deform_attn_impl,
                                      checkpoint_decoder)
        # mmdet 3.3.0 DINO.__init__ (mmdet/models/detectors/dino.py), this project's
        # query generator built in place of CdnQueryGenerator
        DeformableDETR.__init__(self, *args, encoder=encoder, decoder=decoder, **kwargs)
        if not (self.as_two_stage and self.with_box_refine):
            raise ConfigError('FastDINO: DINO needs as_two_stage=True and '
                              'with_box_refine=True')
        dn_cfg = dict(dn_cfg)
        if {'num_classes', 'num_queries', 'hidden_dim'} & set(dn_cfg):
            raise ConfigError('FastDINO: dn_cfg must not set num_classes, num_queries or '
                              'hidden_dim: they come from the detector')
        self.dn_query_generator = LeanCdnQueryGenerator(
            **dn_cfg, num_classes=self.bbox_head.num_classes, embed_dims=self.embed_dims,
            num_matching_queries=self.num_queries)
        self.deform_attn_impl = deform_attn_impl
        self.checkpoint_encoder = bool(checkpoint_encoder)
        self.checkpoint_decoder = bool(checkpoint_decoder)
        self._check_max_per_img()

    def _init_layers(self) -> None:
        # mmdet 3.3.0 DINO._init_layers, this project's encoder and decoder
        self.positional_encoding = SinePositionalEncoding(**self.positional_encoding)
        self.encoder = DeformableEncoder(**self.encoder)
        self.decoder = DinoDecoder(**self.decoder)
        self.embed_dims = self.encoder.embed_dims
        self.query_embedding = nn.Embedding(self.num_queries, self.embed_dims)
        num_feats = self.positional_encoding.num_feats
        if num_feats * 2 != self.embed_dims:
            raise ConfigError(f'FastDINO: positional_encoding.num_feats must be half of '
                              f'embed_dims {self.embed_dims}, got {num_feats}')
        self.level_embed = nn.Parameter(torch.Tensor(self.num_feature_levels, self.embed_dims))
        self.memory_trans_fc = nn.Linear(self.embed_dims, self.embed_dims)
        self.memory_trans_norm = nn.LayerNorm(self.embed_dims)

    def _check_max_per_img(self) -> None:
        """DETR heads pick the top ``max_per_img`` of ``queries x classes`` scores: more
        than there are fails at the first prediction ("selected index k out of range").
        Few queries and classes (a small dataset, a shrunk model) can get there: keep
        them all and say so."""
        test_cfg = getattr(self.bbox_head, 'test_cfg', None)
        if not test_cfg or 'max_per_img' not in test_cfg:
            return
        candidates = self.num_queries * self.bbox_head.num_classes
        if test_cfg['max_per_img'] > candidates:
            print_log(f'FastDINO: test_cfg.max_per_img={test_cfg["max_per_img"]} is more '
                      f'than the {self.num_queries} queries x {self.bbox_head.num_classes} '
                      f'classes = {candidates} scores there are: keeping {candidates}',
                      logger='current', level=logging.WARNING)
            test_cfg['max_per_img'] = candidates

    def parse_losses(self, losses: Dict[str, Tensor]) -> Tuple[Tensor, Dict[str, Tensor]]:
        """mmengine's ``parse_losses`` (the total of the loss terms; terms and total
        logged). The head's :class:`.PackedLosses` give one sum and a
        :class:`.PackedLogVars` of one tensor; any other dict goes through mmengine's."""
        if not isinstance(losses, PackedLosses):
            return super().parse_losses(losses)
        total = losses.packed.sum()
        return total, PackedLogVars(['loss', *losses], torch.cat([total[None],
                                                                  losses.packed]).detach())

    # -- the feature sizes from the host ---------------------------------------------------

    def pre_transformer(self, mlvl_feats, batch_data_samples=None) -> Tuple[Dict, Dict]:
        """mmdet 3.3.0 ``DeformableDETR.pre_transformer`` (same outputs), the sizes kept as
        Python ints (``host_shapes``, in both dicts) and sent with the level starts in one
        copy."""
        batch_size = mlvl_feats[0].size(0)
        input_img_h, input_img_w = batch_data_samples[0].batch_input_shape
        img_shape_list = [sample.img_shape for sample in batch_data_samples]
        same_shape = all(s[0] == input_img_h and s[1] == input_img_w for s in img_shape_list)
        if same_shape:
            mlvl_masks = [None] * len(mlvl_feats)
            mlvl_pos_embeds = [self.positional_encoding(None, input=feat) for feat in mlvl_feats]
        else:
            masks = mlvl_feats[0].new_ones((batch_size, input_img_h, input_img_w))
            for img_id in range(batch_size):
                img_h, img_w = img_shape_list[img_id]
                masks[img_id, :img_h, :img_w].fill_(0)
            mlvl_masks, mlvl_pos_embeds = [], []
            for feat in mlvl_feats:
                mlvl_masks.append(F.interpolate(masks[None], size=feat.shape[-2:]).to(
                    torch.bool).squeeze(0))
                mlvl_pos_embeds.append(self.positional_encoding(mlvl_masks[-1]))
        feat_flatten, lvl_pos_embed_flatten, mask_flatten, host_shapes = [], [], [], []
        for lvl, (feat, mask, pos_embed) in enumerate(
                zip(mlvl_feats, mlvl_masks, mlvl_pos_embeds)):
            batch_size, c, h, w = feat.shape
            host_shapes.append((h, w))
            feat = feat.view(batch_size, c, -1).permute(0, 2, 1)
            pos_embed = pos_embed.view(batch_size, c, -1).permute(0, 2, 1)
            lvl_pos_embed_flatten.append(pos_embed + self.level_embed[lvl].view(1, 1, -1))
            feat_flatten.append(feat)
            mask_flatten.append(None if mask is None else mask.flatten(1))
        feat_flatten = torch.cat(feat_flatten, 1)
        lvl_pos_embed_flatten = torch.cat(lvl_pos_embed_flatten, 1)
        mask_flatten = None if mask_flatten[0] is None else torch.cat(mask_flatten, 1)
        starts = [0]
        for h, w in host_shapes[:-1]:
            starts.append(starts[-1] + h * w)
        packed = host_to_device(np.array(
            [v for hw in host_shapes for v in hw] + starts, dtype=np.int64), feat_flatten.device)
        spatial_shapes = packed[:2 * len(host_shapes)].view(-1, 2)
        level_start_index = packed[2 * len(host_shapes):]
        if mlvl_masks[0] is not None:
            valid_ratios = torch.stack([self.get_valid_ratio(m) for m in mlvl_masks], 1)
        else:
            valid_ratios = mlvl_feats[0].new_ones(batch_size, len(mlvl_feats), 2)
        encoder_inputs_dict = dict(
            feat=feat_flatten, feat_mask=mask_flatten, feat_pos=lvl_pos_embed_flatten,
            spatial_shapes=spatial_shapes, level_start_index=level_start_index,
            valid_ratios=valid_ratios, host_shapes=host_shapes)
        decoder_inputs_dict = dict(
            memory_mask=mask_flatten, spatial_shapes=spatial_shapes,
            level_start_index=level_start_index, valid_ratios=valid_ratios,
            host_shapes=host_shapes)
        return encoder_inputs_dict, decoder_inputs_dict

    def forward_encoder(self, feat: Tensor, feat_mask: Optional[Tensor], feat_pos: Tensor,
                        spatial_shapes: Tensor, level_start_index: Tensor,
                        valid_ratios: Tensor, host_shapes: HostShapes) -> Dict:
        """mmdet's ``forward_encoder``; its ``spatial_shapes`` output, which
        ``pre_decoder`` hands to :meth:`gen_encoder_output_proposals` only, is
        ``host_shapes``."""
        memory = self.encoder(query=feat, query_pos=feat_pos, key_padding_mask=feat_mask,
                              spatial_shapes=spatial_shapes,
                              level_start_index=level_start_index, valid_ratios=valid_ratios,
                              host_shapes=host_shapes)
        return dict(memory=memory, memory_mask=feat_mask, spatial_shapes=host_shapes)

    def gen_encoder_output_proposals(self, memory: Tensor, memory_mask: Optional[Tensor],
                                     spatial_shapes: HostShapes) -> Tuple[Tensor, Tensor]:
        """mmdet 3.3.0 ``DeformableDETR.gen_encoder_output_proposals`` with
        ``spatial_shapes`` the levels' (h, w) as Python ints."""
        bs = memory.size(0)
        proposals = []
        _cur = 0
        for lvl, (H, W) in enumerate(spatial_shapes):
            grid_y, grid_x = torch.meshgrid(
                torch.linspace(0, H - 1, H, dtype=torch.float32, device=memory.device),
                torch.linspace(0, W - 1, W, dtype=torch.float32, device=memory.device),
                indexing='ij')
            grid = torch.cat([grid_x.unsqueeze(-1), grid_y.unsqueeze(-1)], -1)
            grid = grid.unsqueeze(0).expand(bs, -1, -1, -1) + 0.5
            if memory_mask is not None:
                mask_flatten_ = memory_mask[:, _cur:(_cur + H * W)].view(bs, H, W, 1)
                valid_H = torch.sum(~mask_flatten_[:, :, 0, 0], 1).unsqueeze(-1)
                valid_W = torch.sum(~mask_flatten_[:, 0, :, 0], 1).unsqueeze(-1)
                grid = grid / torch.cat([valid_W, valid_H], 1).view(bs, 1, 1, 2)
            else:
                grid = torch.stack([grid[..., 0] / W, grid[..., 1] / H], -1)
            wh = torch.ones_like(grid) * 0.05 * (2.0**lvl)
            proposals.append(torch.cat((grid, wh), -1).view(bs, -1, 4))
            _cur += H * W
        output_proposals = torch.cat(proposals, 1)
        output_proposals_valid = ((output_proposals > 0.01) & (output_proposals < 0.99)).sum(
            -1, keepdim=True) == output_proposals.shape[-1]
        output_proposals = torch.log(output_proposals / (1 - output_proposals))
        if memory_mask is not None:
            output_proposals = output_proposals.masked_fill(memory_mask.unsqueeze(-1),
                                                            float('inf'))
        output_proposals = output_proposals.masked_fill(~output_proposals_valid, float('inf'))
        output_memory = memory
        if memory_mask is not None:
            output_memory = output_memory.masked_fill(memory_mask.unsqueeze(-1), float(0))
        output_memory = output_memory.masked_fill(~output_proposals_valid, float(0))
        output_memory = self.memory_trans_fc(output_memory)
        output_memory = self.memory_trans_norm(output_memory)
        return output_memory, output_proposals
