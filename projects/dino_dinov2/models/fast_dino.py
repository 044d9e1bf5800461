"""mmdet's DINO detector with its execution choices exposed to the config.

mmdet's ``DINO`` builds its deformable attention and transformer layers by class and
offers no switch for how they run. ``FastDINO`` is the same model (same parameters,
state-dict keys, losses) with the choices the stock class lacks:

- ``deform_attn_impl``: ``'triton'``, ``'mmcv'``, ``'pytorch'`` or ``'auto'`` (Triton on a
  GPU, mmcv's CUDA kernel where Triton is missing, PyTorch on the CPU); see
  :mod:`.deformable_attention`. The log says once what ran.
- ``checkpoint_encoder`` / ``checkpoint_decoder``: activation checkpointing of each
  encoder / decoder layer (less memory, one more forward of those layers per step).
- ``lean_step``: the training step without host round trips where the host already knows
  the numbers: feature sizes, level starts, reference-point and proposal grids from Python
  ints (one pinned copy), the denoising queries built from host-known box counts
  (:class:`.LeanCdnQueryGenerator`). Same numbers as mmdet's code (``False`` runs it).
"""
from __future__ import annotations

import logging
from collections import OrderedDict

import numpy as np
import torch
import torch.nn.functional as F
from mmdet.models.detectors import DINO
from mmdet.models.layers.transformer import DeformableDetrTransformerEncoder
from mmdet.registry import MODELS
from mmengine.logging import print_log

from ..errors import ConfigError

from .activation_checkpoint import checkpoint_layers
from .deformable_attention import IMPLS as DEFORM_ATTN_IMPLS
from .deformable_attention import use_deformable_attention
from .host_data import host_to_device
from .lean_denoising import LeanCdnQueryGenerator


class HostShapesEncoder(DeformableDetrTransformerEncoder):
    """mmdet's deformable encoder whose reference points come from the feature sizes as
    Python ints (``host_shapes``) instead of a loop over the values of a device tensor."""

    def forward(self, query, query_pos, key_padding_mask, spatial_shapes, level_start_index,
                valid_ratios, host_shapes=None, **kwargs):
        reference_points = self.get_encoder_reference_points(
            spatial_shapes if host_shapes is None else host_shapes, valid_ratios,
            device=query.device)
        for layer in self.layers:
            query = layer(query=query, query_pos=query_pos, key_padding_mask=key_padding_mask,
                          spatial_shapes=spatial_shapes, level_start_index=level_start_index,
                          valid_ratios=valid_ratios, reference_points=reference_points,
                          **kwargs)
        return query


class PackedLogVars(OrderedDict):
    """Logged values that are the elements of one tensor, ``packed`` (in key order)."""
    packed: torch.Tensor


@MODELS.register_module()
class FastDINO(DINO):
    """DINO with a selectable deformable-attention path and optional checkpointing.

    Args:
        deform_attn_impl: ``'auto'``, ``'triton'``, ``'mmcv'`` or ``'pytorch'`` (the
            original's pure-PyTorch path on every device).
        checkpoint_encoder: recompute encoder layer activations in backward.
        checkpoint_decoder: recompute decoder layer activations in backward.
        *args, **kwargs: mmdet ``DINO``'s arguments.
    """

    def __init__(self,
                 *args,
                 deform_attn_impl: str = 'auto',
                 checkpoint_encoder: bool = False,
                 checkpoint_decoder: bool = False,
                 lean_step: bool = True,
                 **kwargs) -> None:
        if deform_attn_impl not in DEFORM_ATTN_IMPLS:
            raise ConfigError(f'FastDINO: deform_attn_impl must be one of '
                              f'{DEFORM_ATTN_IMPLS}, got {deform_attn_impl!r}')
        super().__init__(*args, **kwargs)
        self.deform_attn_impl = deform_attn_impl
        self.checkpoint_encoder = checkpoint_encoder
        self.checkpoint_decoder = checkpoint_decoder
        self.lean_step = bool(lean_step)
        self._host_shapes = None
        if self.lean_step and self.dn_query_generator is not None:
            self.dn_query_generator.__class__ = LeanCdnQueryGenerator
        if self.lean_step:
            if type(self.encoder) is not DeformableDetrTransformerEncoder:
                raise ConfigError(f'FastDINO: lean_step=True needs mmdet\'s deformable '
                                  f'encoder, got {type(self.encoder).__name__}')
            self.encoder.__class__ = HostShapesEncoder
        # the encoder's self-attention and the decoder's cross-attention
        if not (use_deformable_attention(self.encoder, deform_attn_impl)
                and use_deformable_attention(self.decoder, deform_attn_impl)):
            raise ConfigError('FastDINO: no deformable attention in the encoder or decoder')
        self._check_max_per_img()
        if checkpoint_encoder:
            checkpoint_layers(self.encoder.layers)
        if checkpoint_decoder:
            checkpoint_layers(self.decoder.layers)

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

    def parse_losses(self, losses):
        """mmengine's ``parse_losses`` (total of the terms whose key has 'loss'; the
        terms and the total logged) from the head's packed losses when it has them: one
        sum and one tensor of all logged values, not a mean and an add per term."""
        packed = getattr(losses, 'packed', None)
        if packed is None or not self.lean_step or not all('loss' in key for key in losses):
            return super().parse_losses(losses)
        total = packed.sum()
        row = torch.cat([total[None], packed]).detach()
        log_vars = PackedLogVars(zip(['loss', *losses], row.unbind()))
        log_vars.packed = row
        return total, log_vars

    # -- the lean step: feature sizes from the host ------------------------------------
    # mmdet builds the (levels, 2) size tensor from ``torch._shape_as_tensor(feat)`` moved
    # to the device level by level (a host-to-device copy each) and loops over that
    # tensor's values for the encoder's reference points and the proposals' grids
    # (``.item()`` per size: 16 reads a step). The sizes are known on the host: here they
    # stay Python ints and reach the device in one pinned copy with the level starts.

    def pre_transformer(self, mlvl_feats, batch_data_samples=None):
        if not self.lean_step:
            return super().pre_transformer(mlvl_feats, batch_data_samples)
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
        self._host_shapes = host_shapes
        if mlvl_masks[0] is not None:
            valid_ratios = torch.stack([self.get_valid_ratio(m) for m in mlvl_masks], 1)
        else:
            valid_ratios = mlvl_feats[0].new_ones(batch_size, len(mlvl_feats), 2)
        encoder_inputs_dict = dict(
            feat=feat_flatten, feat_mask=mask_flatten, feat_pos=lvl_pos_embed_flatten,
            spatial_shapes=spatial_shapes, level_start_index=level_start_index,
            valid_ratios=valid_ratios)
        decoder_inputs_dict = dict(
            memory_mask=mask_flatten, spatial_shapes=spatial_shapes,
            level_start_index=level_start_index, valid_ratios=valid_ratios)
        return encoder_inputs_dict, decoder_inputs_dict

    def forward_encoder(self, feat, feat_mask, feat_pos, spatial_shapes, level_start_index,
                        valid_ratios) -> dict:
        if not self.lean_step:
            return super().forward_encoder(feat, feat_mask, feat_pos, spatial_shapes,
                                           level_start_index, valid_ratios)
        memory = self.encoder(query=feat, query_pos=feat_pos, key_padding_mask=feat_mask,
                              spatial_shapes=spatial_shapes,
                              level_start_index=level_start_index, valid_ratios=valid_ratios,
                              host_shapes=self._host_shapes)
        return dict(memory=memory, memory_mask=feat_mask, spatial_shapes=spatial_shapes)

    def gen_encoder_output_proposals(self, memory, memory_mask, spatial_shapes):
        if not self.lean_step:
            return super().gen_encoder_output_proposals(memory, memory_mask, spatial_shapes)
        # DeformableDETR's, its loop over the sizes in Python ints
        bs = memory.size(0)
        proposals = []
        _cur = 0
        for lvl, (H, W) in enumerate(self._host_shapes):
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
