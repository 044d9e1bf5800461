"""mmdet's DINO detector with its execution choices exposed to the config.

mmdet's ``DINO`` builds its deformable attention and transformer layers by class and
offers no switch for how they run. ``FastDINO`` is the same model (same parameters,
state-dict keys, losses) with the choices the stock class lacks:

- ``deform_attn_impl``: ``'triton'``, ``'mmcv'``, ``'pytorch'`` or ``'auto'`` (Triton on a
  GPU, mmcv's CUDA kernel where Triton is missing, PyTorch on the CPU); see
  :mod:`.deformable_attention`. The log says once what ran.
- ``checkpoint_encoder`` / ``checkpoint_decoder``: activation checkpointing of each
  encoder / decoder layer (less memory, one more forward of those layers per step).
"""
from __future__ import annotations

import logging

from mmdet.models.detectors import DINO
from mmdet.registry import MODELS
from mmengine.logging import print_log

from ..errors import ConfigError

from .activation_checkpoint import checkpoint_layers
from .deformable_attention import IMPLS as DEFORM_ATTN_IMPLS
from .deformable_attention import use_deformable_attention


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
