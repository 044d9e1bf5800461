"""Hungarian matching for many prediction sets with one device-to-host transfer.

mmdet's ``HungarianAssigner.assign`` handles one image of one decoder layer: it computes
the cost matrix, copies it to the host (``.cpu()``, a GPU synchronisation), solves it with
scipy, and copies the indices back (two more synchronisations); the DETR heads then call
``nonzero`` on the result (two more). DINO matches every decoder layer and the encoder
proposals of every image, so a 6-layer, batch-2 step stalls the GPU ~70 times.

:meth:`BatchHungarianAssigner.assign_batch` takes all the (prediction set, image) pairs
of a step: it computes each image's costs for all of its sets in one call on the device
(rows stacked; the match costs are row-wise, so the values are those the stock assigner
computes), copies all matrices to the host at once and solves them with scipy exactly as
the stock assigner does. The assignments stay on the host, where the head builds its
targets from them (:func:`.lean_dino_losses`). Assignments are identical to the stock
assigner's. (mmdet's ``BBoxL1Cost`` copies its normalisation factor to the device on every
call: with the image's factor passed in, not at all.)
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
from mmdet.models.task_modules.assigners import HungarianAssigner
from mmdet.models.task_modules.assigners.match_cost import BBoxL1Cost, IoUCost
from mmdet.structures.bbox import bbox_xyxy_to_cxcywh
from mmdet.registry import TASK_UTILS
from mmengine.structures import InstanceData
from scipy.optimize import linear_sum_assignment

from .host_data import to_host
from .lean_losses import giou


@TASK_UTILS.register_module()
class BatchHungarianAssigner(HungarianAssigner):
    """``HungarianAssigner`` that solves a whole batch of matchings per host round trip.

    Args:
        match_costs: as mmdet's ``HungarianAssigner`` (e.g. focal-loss class cost,
            L1 box cost, GIoU cost). ``assign`` (one matching) is mmdet's.
    """

    def _total_cost(self, preds: InstanceData, gts: InstanceData,
                    img_meta: Optional[dict], factor=None) -> torch.Tensor:
        return torch.stack([
            self._cost(match_cost, preds, gts, img_meta, factor)
            for match_cost in self.match_costs
        ]).sum(dim=0)

    @staticmethod
    def _cost(match_cost, preds, gts, img_meta, factor) -> torch.Tensor:
        """``match_cost``'s matrix. With the image's ``[w, h, w, h]`` already on the device
        (``factor``, float32, from the caller), mmdet's L1 and GIoU costs are computed by
        the same operations without their host-to-device copies (the factor, GIoU's eps)."""
        if factor is not None and type(match_cost) is BBoxL1Cost:
            gt_bboxes, pred_bboxes = gts.bboxes, preds.bboxes
            if match_cost.box_format == 'xywh':
                gt_bboxes = bbox_xyxy_to_cxcywh(gt_bboxes)
                pred_bboxes = bbox_xyxy_to_cxcywh(pred_bboxes)
            factor = factor.to(gt_bboxes.dtype)
            return torch.cdist(pred_bboxes / factor, gt_bboxes / factor, p=1) * \
                match_cost.weight
        if type(match_cost) is IoUCost and match_cost.iou_mode == 'giou':
            pred_bboxes = preds.bboxes
            fp16 = pred_bboxes.dtype == torch.float16
            pred_bboxes = pred_bboxes.float() if fp16 else pred_bboxes
            overlaps = giou(pred_bboxes[:, None], gts.bboxes[None])
            if fp16:
                overlaps = overlaps.to(torch.float16)
            return -overlaps * match_cost.weight
        return match_cost(pred_instances=preds, gt_instances=gts, img_meta=img_meta)

    def assign_batch(self, preds: Sequence[Sequence[InstanceData]],
                     gt_instances: Sequence[InstanceData],
                     img_metas: Sequence[Optional[dict]],
                     factors: Optional[Sequence[torch.Tensor]] = None
                     ) -> List[List[Tuple[np.ndarray, np.ndarray, int]]]:
        """Match each prediction set of each image to that image's ground truth.

        Args:
            preds: per image, its prediction sets (the decoder layers, the encoder
                proposals): ``scores`` (n, classes) logits and ``bboxes`` (n, 4) in
                pixels, x1y1x2y2. An image's sets are costed together.
            gt_instances: per image, ``bboxes`` (m, 4) pixels x1y1x2y2 and ``labels``.
            img_metas: per image, its meta (``img_shape`` for box costs).
            factors: per image, its float32 ``[w, h, w, h]`` (1, 4) on the device, for
                the box costs (otherwise mmdet's costs copy them from the host).

        Returns:
            ``result[i][s]`` for set ``s`` of image ``i``, on the host (numpy):
            ``(pos_inds, pos_assigned_gt_inds, num_neg)``: the matched predictions in
            ascending order, the gt each is matched to, and how many are background
            (what mmdet's ``AssignResult.gt_inds`` says).
        """
        if not (len(preds) == len(gt_instances) == len(img_metas)):
            raise ValueError('BatchHungarianAssigner.assign_batch: got prediction sets of '
                             f'{len(preds)} images, {len(gt_instances)} gt sets and '
                             f'{len(img_metas)} image metas; need one each')
        costs, shapes = [], []
        for i, (sets, gt) in enumerate(zip(preds, gt_instances)):
            shapes.append([(len(p), len(gt)) for p in sets])
            if len(gt) and sum(len(p) for p in sets):
                factor = None if factors is None else factors[i]
                stacked = InstanceData.cat(list(sets)) if len(sets) > 1 else sets[0]
                costs.append(self._total_cost(stacked, gt, img_metas[i], factor).detach())
        # one copy to the host, float32 as the stock solver sees it (bfloat16 has no numpy
        # dtype)
        host = to_host(torch.cat([c.reshape(-1).float() for c in costs])).numpy() \
            if costs else np.zeros(0, np.float32)
        results, offset = [], 0
        for image_shapes in shapes:
            image_results = []
            for num_preds, num_gts in image_shapes:
                if not (num_preds and num_gts):
                    # stock: no gts -> all background; no predictions -> nothing assigned
                    image_results.append((np.zeros(0, np.int64), np.zeros(0, np.int64),
                                          num_preds))
                    continue
                cost = host[offset:offset + num_preds * num_gts].reshape(num_preds, num_gts)
                offset += num_preds * num_gts
                image_results.append(self._solve(cost))
            results.append(image_results)
        return results

    @staticmethod
    def _solve(cost: np.ndarray) -> Tuple[np.ndarray, np.ndarray, int]:
        if not np.isfinite(cost).all():
            # NaN/Inf predictions (weights spoiled by a non-finite step): match anyway;
            # the NaN guard stops the run at its next check, before anything is saved
            cost = np.nan_to_num(cost, nan=1e8, posinf=1e8, neginf=-1e8)
        rows, cols = linear_sum_assignment(cost)
        order = np.argsort(rows)
        return (rows[order].astype(np.int64), cols[order].astype(np.int64),
                len(cost) - len(rows))
