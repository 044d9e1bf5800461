"""DINO's head with the whole step's Hungarian matching done in one batch.

mmdet's ``DINOHead`` computes the matching inside ``_get_targets_single``, one image of
one decoder layer at a time (the assigner's ``.cpu()``, index copies back, ``nonzero``):
several GPU synchronisations per image and layer. ``BatchMatchingDINOHead`` computes the
same losses, but first matches every decoder layer and the encoder proposals of every
image with :class:`.BatchHungarianAssigner` (one device-to-host copy of all costs, one
non-blocking copy of all indices back) and then builds the targets from those results
without synchronising (image sizes go to the device in one non-blocking copy too).

With ``batched_losses`` (the default) the losses of all 13 sets are then computed in one
batched pass whose normalisers and targets come from what the host already knows
(:mod:`.lean_losses`); without it, mmdet's per-layer loss code runs on the precomputed
matching (the loss normalisers read back per layer with ``.item()``, per-image size
tensors). mmdet's ``BBoxL1Cost`` copies its normalisation factor to the device once per
call, which the batched matching makes once per image instead of once per image and layer.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from mmdet.models.dense_heads import DINOHead
from mmdet.registry import MODELS
from mmdet.structures.bbox import bbox_cxcywh_to_xyxy, bbox_xyxy_to_cxcywh
from mmengine.structures import InstanceData
from torch import Tensor

from ..errors import ConfigError

from .batch_hungarian_assigner import BatchHungarianAssigner
from .host_data import host_to_device
from .lean_losses import lean_dino_losses, supports_lean_losses

MATCHING_MODES = ('step', 'layer')


class ConfigTypeError(ConfigError, TypeError):
    """A config that combines types that do not go together."""


def _key(tensors: Sequence[Tensor]) -> tuple:
    """Identity of a list of live tensor views (same memory, shape and strides)."""
    return tuple((t.data_ptr(), tuple(t.shape), t.stride()) for t in tensors)


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
    """``DINOHead`` whose matching runs once per step for all layers and images.

    Needs ``train_cfg.assigner`` of type ``BatchHungarianAssigner``; losses and
    gradients equal ``DINOHead``'s with mmdet's ``HungarianAssigner`` and the same costs.

    Args:
        matching: ``'step'``: every decoder layer and the encoder proposals of every
            image in one assigner call (one host round trip per step); ``'layer'``: one
            call per decoder layer (and one for the encoder proposals) for all images, as
            detrex's criterion calls its matcher (the original-equivalent baseline).
        drop_empty_boxes: leave out of the predictions the boxes that are empty once
            clipped to the image, as the original (detectron2) does.
        batched_losses: all sets' losses in one pass without host reads
            (:mod:`.lean_losses`; needs ``matching='step'`` and the sigmoid focal, L1 and
            GIoU losses); False: mmdet's loss code, set by set; None (default): on with
            ``matching='step'``.
        *args, **kwargs: mmdet ``DINOHead``'s arguments.
    """

    def __init__(self, *args, matching: str = 'step', drop_empty_boxes: bool = True,
                 batched_losses: Optional[bool] = None, **kwargs) -> None:
        if matching not in MATCHING_MODES:
            raise ConfigError(f'BatchMatchingDINOHead: matching must be one of '
                              f'{MATCHING_MODES}, got {matching!r}')
        super().__init__(*args, **kwargs)
        self.matching = matching
        self.drop_empty_boxes = drop_empty_boxes
        self.batched_losses = matching == 'step' if batched_losses is None else \
            bool(batched_losses)
        if self.batched_losses and matching != 'step':
            raise ConfigError("BatchMatchingDINOHead: batched_losses=True needs "
                              "matching='step'")
        if self.batched_losses:
            why_not = supports_lean_losses(self)
            if why_not:
                raise ConfigError(f'BatchMatchingDINOHead: batched_losses=True: {why_not}; '
                                  'set batched_losses=False for these losses')
        self._pending: Dict[tuple, list] = {}
        if self.train_cfg is not None and not isinstance(
                getattr(self, 'assigner', None), BatchHungarianAssigner):
            raise ConfigTypeError(
                'BatchMatchingDINOHead needs train_cfg.assigner.type='
                f"'BatchHungarianAssigner', got {type(self.assigner).__name__}; use "
                "bbox_head.type='DINOHead' for the stock per-image matching")

    @staticmethod
    def _pred_instances(cls_score: Tensor, bbox_pred: Tensor, factor: Tensor) -> InstanceData:
        # As DETRHead._get_targets_single: normalised cxcywh -> pixel x1y1x2y2.
        return InstanceData(scores=cls_score, bboxes=bbox_cxcywh_to_xyxy(bbox_pred) * factor)

    def _match(self, sets: List[Tuple[List[Tensor], List[Tensor]]],
               batch_gt_instances, batch_img_metas) -> Dict[tuple, list]:
        """Assign each (per-image scores, per-image boxes) set; keyed by the scores."""
        preds, gts, metas = [], [], []
        factors = image_factors(batch_img_metas, sets[0][1][0].device)
        for cls_scores_list, bbox_preds_list in sets:
            set_factors = factors.to(bbox_preds_list[0].dtype)
            for i, (cls_score, bbox_pred, gt, meta) in enumerate(
                    zip(cls_scores_list, bbox_preds_list, batch_gt_instances,
                        batch_img_metas)):
                preds.append(self._pred_instances(cls_score, bbox_pred,
                                                  set_factors[i:i + 1]))
                gts.append(gt)
                metas.append(meta)
        results = self.assigner.assign_batch(preds, gts, metas)
        out, i = {}, 0
        for cls_scores_list, _ in sets:
            out[_key(cls_scores_list)] = results[i:i + len(cls_scores_list)]
            i += len(cls_scores_list)
        return out

    def loss_by_feat(self,
                     all_layers_cls_scores: Tensor,
                     all_layers_bbox_preds: Tensor,
                     enc_cls_scores: Tensor,
                     enc_bbox_preds: Tensor,
                     batch_gt_instances,
                     batch_img_metas: List[dict],
                     dn_meta: Dict[str, int],
                     batch_gt_instances_ignore=None) -> Dict[str, Tensor]:
        """``DINOHead.loss_by_feat`` with all matchings computed up front.

        Shapes as ``DINOHead``: scores (layers, B, queries_total, classes), boxes
        (layers, B, queries_total, 4) normalised cxcywh; encoder outputs (B, Q, ...).
        """
        if self.batched_losses:
            return self._batched_loss_by_feat(
                all_layers_cls_scores, all_layers_bbox_preds, enc_cls_scores,
                enc_bbox_preds, batch_gt_instances, batch_img_metas, dn_meta)
        if self.matching == 'step':
            matching_cls, matching_bbox, _, _ = self.split_outputs(
                all_layers_cls_scores, all_layers_bbox_preds, dn_meta)
            # Same views DETRHead.loss_by_feat_single will pass to get_targets.
            sets = [(list(c), list(b)) for c, b in zip(matching_cls, matching_bbox)]
            if enc_cls_scores is not None:
                sets.append((list(enc_cls_scores), list(enc_bbox_preds)))
            self._pending = self._match(sets, batch_gt_instances, batch_img_metas)
        # 'layer': get_targets matches each set when the loss of its layer asks for it
        try:
            return super().loss_by_feat(all_layers_cls_scores, all_layers_bbox_preds,
                                        enc_cls_scores, enc_bbox_preds, batch_gt_instances,
                                        batch_img_metas, dn_meta, batch_gt_instances_ignore)
        finally:
            self._pending = {}

    def _batched_loss_by_feat(self, all_layers_cls_scores, all_layers_bbox_preds,
                              enc_cls_scores, enc_bbox_preds, batch_gt_instances,
                              batch_img_metas, dn_meta) -> Dict[str, Tensor]:
        """The loss dict of ``DINOHead.loss_by_feat`` by :func:`.lean_dino_losses`."""
        matching_cls, matching_bbox, dn_cls, dn_bbox = self.split_outputs(
            all_layers_cls_scores, all_layers_bbox_preds, dn_meta)
        set_cls, set_bbox = list(matching_cls), list(matching_bbox)
        has_enc = enc_cls_scores is not None
        if has_enc:
            set_cls.append(enc_cls_scores)
            set_bbox.append(enc_bbox_preds)
        preds, gts, metas, pair_factors = [], [], [], []
        factors = image_factors(batch_img_metas, set_bbox[0].device)
        for cls_s, bbox_s in zip(set_cls, set_bbox):
            # pixel x1y1x2y2 of all images at once (DETRHead does it per image)
            boxes = bbox_cxcywh_to_xyxy(bbox_s) * factors.to(bbox_s.dtype)[:, None]
            for i, (gt, meta) in enumerate(zip(batch_gt_instances, batch_img_metas)):
                preds.append(InstanceData(scores=cls_s[i], bboxes=boxes[i]))
                gts.append(gt)
                metas.append(meta)
                pair_factors.append(factors[i:i + 1])
        assignments = self.assigner.assign_batch(preds, gts, metas, host=True,
                                                 factors=pair_factors)
        return lean_dino_losses(self, set_cls, set_bbox, has_enc, assignments, dn_cls,
                                dn_bbox, dn_meta, batch_gt_instances, batch_img_metas,
                                factors)

    def get_targets(self, cls_scores_list: List[Tensor], bbox_preds_list: List[Tensor],
                    batch_gt_instances, batch_img_metas: List[dict]) -> tuple:
        """``DETRHead.get_targets`` from the step's precomputed matching.

        A call that was not matched up front (another caller, another order) is matched
        here, in one batch for its images.
        """
        results = self._pending.pop(_key(cls_scores_list), None)
        if results is None:
            results = self._match([(cls_scores_list, bbox_preds_list)], batch_gt_instances,
                                  batch_img_metas)[_key(cls_scores_list)]
        labels_list, label_weights_list, bbox_targets_list, bbox_weights_list = \
            [], [], [], []
        num_total_pos = num_total_neg = 0
        factors = image_factors(batch_img_metas, bbox_preds_list[0].device).to(
            bbox_preds_list[0].dtype)
        for i, (result, bbox_pred, gt) in enumerate(
                zip(results, bbox_preds_list, batch_gt_instances)):
            targets = self._targets_single(result, bbox_pred, gt, factors[i:i + 1])
            for lst, t in zip((labels_list, label_weights_list, bbox_targets_list,
                               bbox_weights_list), targets):
                lst.append(t)
            num_total_pos += len(result.get_extra_property('pos_inds'))
            num_total_neg += len(result.get_extra_property('neg_inds'))
        return (labels_list, label_weights_list, bbox_targets_list, bbox_weights_list,
                num_total_pos, num_total_neg)

    def _predict_by_feat_single(self, cls_score: Tensor, bbox_pred: Tensor, img_meta: dict,
                                rescale: bool = True) -> InstanceData:
        """``DETRHead``'s top-``max_per_img`` detections, without the boxes that clipping
        to the image left empty (zero width or height) when ``drop_empty_boxes``: as the
        original's ``detector_postprocess`` (detectron2), an empty box is no detection."""
        results = super()._predict_by_feat_single(cls_score, bbox_pred, img_meta, rescale)
        if self.drop_empty_boxes:
            boxes = results.bboxes
            keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
            if not bool(keep.all()):
                results = results[keep]
        return results

    def _targets_single(self, result, bbox_pred: Tensor, gt_instances: InstanceData,
                        factor: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        """``DETRHead._get_targets_single`` given the assignment (no synchronisation).

        ``factor``: (1, 4) ``[w, h, w, h]`` of the image.
        """
        pos_inds = result.get_extra_property('pos_inds')
        pos_assigned_gt_inds = result.get_extra_property('pos_assigned_gt_inds')
        gt_bboxes = gt_instances.bboxes
        num_bboxes = bbox_pred.size(0)

        labels = gt_bboxes.new_full((num_bboxes, ), self.num_classes, dtype=torch.long)
        labels[pos_inds] = gt_instances.labels[pos_assigned_gt_inds]
        label_weights = gt_bboxes.new_ones(num_bboxes)
        bbox_targets = torch.zeros_like(bbox_pred, dtype=gt_bboxes.dtype)
        bbox_weights = torch.zeros_like(bbox_pred, dtype=gt_bboxes.dtype)
        bbox_weights[pos_inds] = 1.0
        pos_gt_bboxes = gt_bboxes[pos_assigned_gt_inds, :]
        bbox_targets[pos_inds] = bbox_xyxy_to_cxcywh(pos_gt_bboxes / factor)
        return labels, label_weights, bbox_targets, bbox_weights
