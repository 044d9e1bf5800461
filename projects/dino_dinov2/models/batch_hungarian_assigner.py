"""Hungarian matching for many prediction sets with one device-to-host transfer.

mmdet's ``HungarianAssigner.assign`` handles one image of one decoder layer: it computes
the cost matrix, copies it to the host (``.cpu()``, a GPU synchronisation), solves it with
scipy, and copies the indices back (two more synchronisations); the DETR heads then call
``nonzero`` on the result (two more). DINO matches every decoder layer and the encoder
proposals of every image, so a 6-layer, batch-2 step stalls the GPU ~70 times.

:meth:`BatchHungarianAssigner.assign_batch` takes all the (prediction set, image) pairs
of a step: it computes each image's costs for all of its sets in one call on the device
(rows stacked; the match costs are row-wise, so the values are those the stock assigner
computes), copies all matrices to the host at once, solves them with scipy exactly as the
stock assigner does, and sends all indices back in one copy. Each result also carries
``pos_inds``, ``neg_inds`` and ``pos_assigned_gt_inds`` (extra properties) so a head can
build its targets without further synchronisation. Assignments are identical to the
stock assigner's. (mmdet's ``BBoxL1Cost`` copies its normalisation factor to the device on
every call: with the sets of an image costed together, that is once per image.)
"""
from __future__ import annotations

from typing import List, Optional, Sequence

import numpy as np
import torch
from mmdet.models.task_modules.assigners import AssignResult, HungarianAssigner
from mmdet.models.task_modules.assigners.match_cost import BBoxL1Cost, IoUCost
from mmdet.structures.bbox import bbox_xyxy_to_cxcywh
from mmdet.registry import TASK_UTILS
from mmengine.structures import InstanceData
from scipy.optimize import linear_sum_assignment

from .host_data import host_to_device, to_host
from .lean_losses import pairwise_giou

_EXTRA = ('pos_inds', 'neg_inds', 'pos_assigned_gt_inds')


@TASK_UTILS.register_module()
class BatchHungarianAssigner(HungarianAssigner):
    """``HungarianAssigner`` that solves a whole batch of matchings per host round trip.

    Args:
        match_costs: as mmdet's ``HungarianAssigner`` (e.g. focal-loss class cost,
            L1 box cost, GIoU cost).
        batched_costs: cost every prediction of an :meth:`assign_batch` call against every
            gt of the call in one matrix, images crossed, and copy it to the host whole, as
            detrex's ``HungarianMatcher`` does (the original-equivalent baseline); False:
            each image's sets against that image's gts only (less work, same matches).
    """

    def __init__(self, *args, batched_costs: bool = False, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.batched_costs = bool(batched_costs)

    def assign(self,
               pred_instances: InstanceData,
               gt_instances: InstanceData,
               img_meta: Optional[dict] = None,
               **kwargs) -> AssignResult:
        """One matching (the stock interface); see :meth:`assign_batch`."""
        return self.assign_batch([pred_instances], [gt_instances], [img_meta])[0]

    def _costs(self, preds: Sequence[InstanceData], gt: InstanceData,
               img_meta: Optional[dict], factor=None) -> List[torch.Tensor]:
        """Cost matrices (num_preds_k, num_gts) of several sets against one image's gts."""
        stacked = InstanceData.cat(list(preds)) if len(preds) > 1 else preds[0]
        cost = self._total_cost(stacked, gt, img_meta, factor)
        return list(cost.detach().split([len(p) for p in preds], dim=0))

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
            overlaps = pairwise_giou(pred_bboxes.float() if fp16 else pred_bboxes, gts.bboxes)
            if fp16:
                overlaps = overlaps.to(torch.float16)
            return -overlaps * match_cost.weight
        return match_cost(pred_instances=preds, gt_instances=gts, img_meta=img_meta)

    def _image_costs(self, preds, gts, metas, factors=None) -> List[np.ndarray]:
        """Host cost matrices, each image's sets costed together; one copy to the host."""
        groups = {}  # pairs of one image share their gt and meta objects
        for k, (gt, meta) in enumerate(zip(gts, metas)):
            groups.setdefault((id(gt), id(meta)), []).append(k)
        costs: List[Optional[torch.Tensor]] = [None] * len(preds)
        for members in groups.values():
            k0 = members[0]
            factor = None if factors is None else factors[k0]
            for k, c in zip(members, self._costs([preds[k] for k in members], gts[k0],
                                                 metas[k0], factor)):
                costs[k] = c
        # float32 as the stock solver sees it (a bfloat16 cost has no numpy dtype)
        host = to_host(torch.cat([c.reshape(-1).float() for c in costs])).numpy()
        out, offset = [], 0
        for p, g in zip(preds, gts):
            out.append(host[offset:offset + len(p) * len(g)].reshape(len(p), len(g)))
            offset += len(p) * len(g)
        return out

    def _cross_batch_costs(self, preds, gts, metas, factors=None) -> List[np.ndarray]:
        """Host cost matrices the way detrex's ``HungarianMatcher`` makes them: one matrix
        of every prediction of the call against every gt of the call (images crossed),
        copied to the host whole; each pair's block is then solved.

        Boxes are normalised by their own image's size first, so one matrix can hold
        several images: the L1 cost then is what mmdet's ``BBoxL1Cost`` computes per image,
        and (G)IoU does not change under a per-axis scaling.
        """
        def normalised(instances, meta, **fields):
            h, w = meta['img_shape'][:2]
            factor = instances.bboxes.new_tensor([w, h, w, h])
            return InstanceData(bboxes=instances.bboxes / factor, **fields)

        stacked_preds = InstanceData.cat([normalised(p, m, scores=p.scores)
                                          for p, m in zip(preds, metas)])
        stacked_gts = InstanceData.cat([normalised(g, m, labels=g.labels)
                                        for g, m in zip(gts, metas)])
        cost = self._total_cost(stacked_preds, stacked_gts, dict(img_shape=(1, 1)))
        host = to_host(cost.detach().float()).numpy()
        rows = np.cumsum([0] + [len(p) for p in preds])
        cols = np.cumsum([0] + [len(g) for g in gts])
        return [host[rows[k]:rows[k + 1], cols[k]:cols[k + 1]] for k in range(len(preds))]

    def assign_batch(self, pred_instances: Sequence[InstanceData],
                     gt_instances: Sequence[InstanceData],
                     img_metas: Sequence[Optional[dict]],
                     host: bool = False,
                     factors: Optional[Sequence[torch.Tensor]] = None) -> List[AssignResult]:
        """Match each ``pred_instances[k]`` to ``gt_instances[k]``.

        Pairs that share the same ``gt_instances`` and ``img_meta`` objects (the decoder
        layers of one image) get their costs computed together.

        Args:
            pred_instances: per pair, ``scores`` (n_k, classes) logits and ``bboxes``
                (n_k, 4) in pixels, x1y1x2y2.
            gt_instances: per pair, ``bboxes`` (m_k, 4) pixels x1y1x2y2 and ``labels``.
            img_metas: per pair, the image's meta (``img_shape`` for box costs).

        Returns:
            One ``AssignResult`` per pair (``gt_inds``: 0 background, i+1 matched to gt
            i; ``labels``), with extra properties ``pos_inds``, ``neg_inds`` and
            ``pos_assigned_gt_inds`` (device ``long`` tensors). With ``host=True``: per
            pair, ``(pos_inds, pos_assigned_gt_inds, num_neg)`` on the host (numpy), for
            a caller that sends what it builds from them to the device itself.
            ``factors``: per pair, the image's float32 ``[w, h, w, h]`` (1, 4) on the device,
            for the box costs (otherwise mmdet's costs copy them from the host).
        """
        if not (len(pred_instances) == len(gt_instances) == len(img_metas)):
            raise ValueError('BatchHungarianAssigner.assign_batch: got '
                             f'{len(pred_instances)} prediction sets, {len(gt_instances)} '
                             f'gt sets and {len(img_metas)} image metas; need one each')
        n = len(pred_instances)
        sizes = [(len(p), len(g)) for p, g in zip(pred_instances, gt_instances)]
        todo = [k for k, (num_preds, num_gts) in enumerate(sizes) if num_preds and num_gts]
        host_costs: List[Optional[np.ndarray]] = [None] * n
        if todo:
            costs = (self._cross_batch_costs if self.batched_costs else self._image_costs)(
                [pred_instances[k] for k in todo], [gt_instances[k] for k in todo],
                [img_metas[k] for k in todo],
                None if factors is None else [factors[k] for k in todo])
            for k, cost in zip(todo, costs):
                host_costs[k] = cost
        gt_inds_host = []
        for k in range(n):
            num_preds, num_gts = sizes[k]
            if host_costs[k] is None:
                # stock: no gts -> all background; no predictions -> nothing assigned
                gt_inds_host.append(np.full(num_preds, 0 if num_gts == 0 else -1,
                                            dtype=np.int64))
                continue
            cost = host_costs[k]
            if not np.isfinite(cost).all():
                # NaN/Inf predictions (weights spoiled by a non-finite step): match anyway;
                # the NaN guard stops the run at its next check, before anything is saved
                cost = np.nan_to_num(cost, nan=1e8, posinf=1e8, neginf=-1e8)
            rows, cols = linear_sum_assignment(cost)
            gt_inds = np.zeros(num_preds, dtype=np.int64)
            gt_inds[rows] = cols + 1
            gt_inds_host.append(gt_inds)

        if host:
            return [(np.nonzero(g > 0)[0], g[g > 0] - 1, int((g == 0).sum()))
                    for g in gt_inds_host]
        # Everything the heads need, computed on the host, sent back in one copy.
        pieces, layout = [], []
        for gt_inds in gt_inds_host:
            pos = np.nonzero(gt_inds > 0)[0]
            neg = np.nonzero(gt_inds == 0)[0]
            parts = (gt_inds, pos, neg, gt_inds[pos] - 1)
            layout.append([len(p) for p in parts])
            pieces.extend(parts)
        device = self._device(gt_instances, pred_instances)
        all_host = np.concatenate(pieces) if pieces else np.zeros(0, np.int64)
        all_dev = host_to_device(all_host, device)
        results = []
        chunks = iter(all_dev.split([s for sizes_k in layout for s in sizes_k]))
        for k in range(n):
            gt_inds, pos, neg, pos_gt = (next(chunks) for _ in range(4))
            gt_labels = gt_instances[k].labels
            labels = torch.full_like(gt_inds, -1)
            labels[pos] = gt_labels[pos_gt].to(labels.dtype)
            result = AssignResult(num_gts=sizes[k][1], gt_inds=gt_inds,
                                  max_overlaps=None, labels=labels)
            for name, value in zip(_EXTRA, (pos, neg, pos_gt)):
                result.set_extra_property(name, value)
            results.append(result)
        return results

    @staticmethod
    def _device(gt_instances, pred_instances) -> torch.device:
        for g in gt_instances:
            return g.labels.device
        for p in pred_instances:
            return p.scores.device
        return torch.device('cpu')
