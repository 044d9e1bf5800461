"""DINO's head with the whole step's Hungarian matching and losses done in one batch.

mmdet's ``DINOHead`` computes the matching inside ``_get_targets_single``, one image of
one decoder layer at a time (the assigner's ``.cpu()``, index copies back, ``nonzero``),
then 13 sets of losses one after another, their normalisers read back with ``.item()``:
several GPU synchronisations per image and layer. ``BatchMatchingDINOHead`` computes the
same losses (the step-equality test holds it to mmdet's: losses, assignments, gradients):
it matches every decoder layer and the encoder proposals of every image with
:class:`.BatchHungarianAssigner` (one device-to-host copy of all costs) and computes all
sets' losses in one pass whose targets and normalisers come from what the host knows
(:func:`.lean_dino_losses`). The loss dict is a :class:`.PackedLosses`.

Where a new loss term goes: :func:`.lean_dino_losses` computes every term over the stacked
rows of all sets and packs them (keys and order as ``DINOHead``); a term added there is
summed into the total and logged like the others.
"""
from __future__ import annotations

from typing import Dict, List, Sequence

import numpy as np
import torch
from mmdet.models.dense_heads import DINOHead
from mmdet.registry import MODELS
from mmdet.structures.bbox import bbox_cxcywh_to_xyxy
from mmengine.structures import InstanceData
from torch import Tensor

from ..errors import ConfigError

from .batch_hungarian_assigner import BatchHungarianAssigner
from .host_data import host_to_device
from .lean_losses import PackedLosses, lean_dino_losses, supports_lean_losses


def image_factors(batch_img_metas: Sequence[dict], device: torch.device) -> Tensor:
    """(B, 4) float32 ``[w, h, w, h]`` of each image on ``device``.

    The stock heads build these with ``new_tensor`` per image and layer, each a
    synchronising host-to-device copy on a GPU; here one pinned, non-blocking copy.
    (Cast to a prediction's dtype, they equal what ``new_tensor`` makes in it.)
    """
    host = np.array(
        [[m['img_shape'][1], m['img_shape'][0]] * 2 for m in batch_img_metas], np.float32)
    return host_to_device(host, device)


@MODELS.register_module()
class BatchMatchingDINOHead(DINOHead):
    """``DINOHead`` whose matching and losses run once per step for all layers and images.

    Needs ``train_cfg.assigner`` of type ``BatchHungarianAssigner`` and the sigmoid focal,
    L1 and GIoU losses (DINO's); losses and gradients equal ``DINOHead``'s with mmdet's
    ``HungarianAssigner`` and the same costs. Predictions leave out the boxes that are
    empty once clipped to the image, as the original (detectron2) does.

    Args: mmdet ``DINOHead``'s.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        why_not = supports_lean_losses(self)
        if why_not:
            raise ConfigError(f'BatchMatchingDINOHead: {why_not}; use '
                              "bbox_head.type='DINOHead' for other losses")
        if self.train_cfg is not None and not isinstance(self.assigner,
                                                         BatchHungarianAssigner):
            raise ConfigError(
                'BatchMatchingDINOHead needs train_cfg.assigner.type='
                f"'BatchHungarianAssigner', got {type(self.assigner).__name__}; use "
                "bbox_head.type='DINOHead' for the stock per-image matching")

    def loss_by_feat(self,
                     all_layers_cls_scores: Tensor,
                     all_layers_bbox_preds: Tensor,
                     enc_cls_scores: Tensor,
                     enc_bbox_preds: Tensor,
                     batch_gt_instances,
                     batch_img_metas: List[dict],
                     dn_meta: Dict[str, int],
                     batch_gt_instances_ignore=None) -> PackedLosses:
        """``DINOHead.loss_by_feat``'s loss dict (same keys, same order, same values).

        Shapes as ``DINOHead``: scores (layers, B, queries_total, classes), boxes
        (layers, B, queries_total, 4) normalised cxcywh; encoder outputs (B, Q, ...).
        """
        matching_cls, matching_bbox, dn_cls, dn_bbox = self.split_outputs(
            all_layers_cls_scores, all_layers_bbox_preds, dn_meta)
        set_cls, set_bbox = list(matching_cls), list(matching_bbox)
        has_enc = enc_cls_scores is not None
        if has_enc:
            set_cls.append(enc_cls_scores)
            set_bbox.append(enc_bbox_preds)
        factors = image_factors(batch_img_metas, set_bbox[0].device)
        # pixel x1y1x2y2 of all images at once (DETRHead does it per image and set)
        pixel_boxes = [bbox_cxcywh_to_xyxy(b) * factors.to(b.dtype)[:, None] for b in set_bbox]
        preds = [[InstanceData(scores=cls_s[i], bboxes=boxes[i])
                  for cls_s, boxes in zip(set_cls, pixel_boxes)]
                 for i in range(len(batch_img_metas))]
        assignments = self.assigner.assign_batch(
            preds, batch_gt_instances, batch_img_metas,
            [factors[i:i + 1] for i in range(len(batch_img_metas))])
        return lean_dino_losses(self, set_cls, set_bbox, has_enc, assignments, dn_cls,
                                dn_bbox, dn_meta, batch_gt_instances, batch_img_metas,
                                factors)

    def _predict_by_feat_single(self, cls_score: Tensor, bbox_pred: Tensor, img_meta: dict,
                                rescale: bool = True) -> InstanceData:
        """``DETRHead``'s top-``max_per_img`` detections without the boxes that clipping
        to the image left empty (zero width or height): as the original's
        ``detector_postprocess`` (detectron2), an empty box is no detection."""
        results = super()._predict_by_feat_single(cls_score, bbox_pred, img_meta, rescale)
        boxes = results.bboxes
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        if not bool(keep.all()):
            results = results[keep]
        return results
