"""All of DINO's training losses in one batched computation, its normalisers from the host.

mmdet's ``DINOHead`` computes 13 sets of losses (6 decoder layers, the encoder proposals,
6 denoising layers) one after another: per set the targets per image (``new_tensor``
image sizes: host-to-device copies), a focal, an L1 and a GIoU loss (each behind a
``torch.any(weight > 0)`` check, and GIoU copies its ``eps`` to the device), and the
normalisers read back with ``.item()``; the denoising targets are rebuilt for every layer.
:func:`lean_dino_losses` computes the same numbers with the sets stacked:

- the targets of every matched set from the step's assignment, scattered in one go (the
  matched rows, their gts and the per-set counts are known on the host: one pinned,
  non-blocking copy), the denoising targets once for all layers;
- one focal, one L1 and one GIoU computation over all rows of all sets, summed per set;
- the normalisers (matched counts, ``reduce_mean`` across ranks) as device tensors.

Sums over a set are taken in another order than mmdet's (float rounding: ~1e-7
relative); every other value is computed by the same operations.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from mmdet.models.losses import FocalLoss, GIoULoss, L1Loss
from mmdet.structures.bbox import bbox_cxcywh_to_xyxy, bbox_xyxy_to_cxcywh
from mmdet.utils import reduce_mean
from torch import Tensor

from .host_data import host_to_device

EPS = torch.finfo(torch.float32).eps  # mmdet's weight_reduce_loss


class PackedLosses(dict):
    """The head's loss dict whose values are the elements of one tensor.

    ``PackedLosses(keys, packed)``: ``packed`` (n,) holds the loss of ``keys[i]`` at ``i``;
    the dict maps each key to its element (a view). :meth:`.FastDINO.parse_losses` sums
    ``packed`` once instead of reading the dict's values one by one.
    """

    def __init__(self, keys: Sequence[str], packed: Tensor) -> None:
        super().__init__(zip(keys, packed.unbind()))
        self.packed = packed


class PackedLogVars(PackedLosses):
    """The logged values of one training step (``loss`` first, then the terms), all in
    one detached tensor ``packed``: what ``train_step`` returns to the hooks, which copy
    ``packed`` to the host in one transfer (:class:`.DeferredRuntimeInfoHook`)."""


def supports_lean_losses(head) -> Optional[str]:
    """None if ``head``'s losses are the ones :func:`lean_dino_losses` computes, else why
    not."""
    cls, box, iou = head.loss_cls, head.loss_bbox, head.loss_iou
    if not (isinstance(cls, FocalLoss) and cls.use_sigmoid and not cls.activated):
        return f'loss_cls is {type(cls).__name__} (sigmoid FocalLoss needed)'
    if type(box) is not L1Loss and not isinstance(box, L1Loss):
        return f'loss_bbox is {type(box).__name__} (L1Loss needed)'
    if not isinstance(iou, GIoULoss):
        return f'loss_iou is {type(iou).__name__} (GIoULoss needed)'
    if cls.reduction != 'mean' or box.reduction != 'mean' or iou.reduction != 'mean':
        return "a loss with reduction other than 'mean'"
    return None


def giou(boxes1: Tensor, boxes2: Tensor, eps: float = 1e-6) -> Tensor:
    """mmdet's ``bbox_overlaps(mode='giou', is_aligned=True)`` (same operations) of
    x1y1x2y2 boxes that broadcast against each other, ``eps`` applied by ``clamp`` instead
    of a tensor copied to the device. Pairwise (n, m): ``giou(b1[:, None], b2[None])``."""
    area1 = (boxes1[..., 2] - boxes1[..., 0]) * (boxes1[..., 3] - boxes1[..., 1])
    area2 = (boxes2[..., 2] - boxes2[..., 0]) * (boxes2[..., 3] - boxes2[..., 1])
    lt = torch.max(boxes1[..., :2], boxes2[..., :2])
    rb = torch.min(boxes1[..., 2:], boxes2[..., 2:])
    wh = (rb - lt).clamp(min=0)
    overlap = wh[..., 0] * wh[..., 1]
    union = (area1 + area2 - overlap).clamp(min=eps)
    ious = overlap / union
    enclosed_lt = torch.min(boxes1[..., :2], boxes2[..., :2])
    enclosed_rb = torch.max(boxes1[..., 2:], boxes2[..., 2:])
    enclose_wh = (enclosed_rb - enclosed_lt).clamp(min=0)
    enclose_area = (enclose_wh[..., 0] * enclose_wh[..., 1]).clamp(min=eps)
    return ious - (enclose_area - union) / enclose_area


def lean_dino_losses(head, set_cls: Sequence[Tensor], set_bbox: Sequence[Tensor],
                     has_enc: bool, assignments: Sequence[tuple],
                     dn_cls: Optional[Tensor], dn_bbox: Optional[Tensor],
                     dn_meta: Optional[Dict[str, int]], batch_gt_instances,
                     batch_img_metas: List[dict], factors: Tensor) -> Dict[str, Tensor]:
    """The loss dict of ``DINOHead.loss_by_feat`` (same keys, same order).

    Args:
        head: the DINO head (its losses, ``num_classes``, ``bg_cls_weight``,
            ``sync_cls_avg_factor``).
        set_cls, set_bbox: per matched set (decoder layers first, the encoder proposals
            last), scores (B, Q, C) and boxes (B, Q, 4) normalised cxcywh.
        has_enc: whether the last set is the encoder proposals' (the others are the
            decoder layers').
        assignments: ``assignments[i][s]`` of image ``i`` and set ``s``: ``(pos_inds,
            pos_gt_inds, num_neg)`` on the host (``BatchHungarianAssigner.assign_batch``).
        dn_cls, dn_bbox: denoising outputs (layers, B, Qdn, C / 4), or None.
        factors: (B, 4) float32 ``[w, h, w, h]`` of each image on the device.
    """
    B = len(batch_img_metas)
    C = head.cls_out_channels
    device = set_cls[0].device if set_cls else dn_cls.device
    gt_counts = [len(g) for g in batch_gt_instances]
    gt_offsets = np.concatenate([[0], np.cumsum(gt_counts)]).astype(np.int64)
    # -- everything the host knows, in one copy --------------------------------------
    rows, gts, pos, neg = [], [], [], []
    base = 0
    for s, cls_s in enumerate(set_cls):
        Q = cls_s.shape[1]
        n_pos = n_neg = 0
        for i in range(B):
            p, g, n = assignments[i][s]
            rows.append(base + i * Q + p)
            gts.append(gt_offsets[i] + g)
            n_pos += len(p)
            n_neg += n
        pos.append(n_pos)
        neg.append(n_neg)
        base += B * Q
    num_matched_rows = base
    num_dn_layers = 0 if dn_cls is None else dn_cls.shape[0]
    dn_rows, dn_gts = [], []
    if num_dn_layers:
        Qdn = dn_meta['num_denoising_queries']
        groups = dn_meta['num_denoising_groups']
        per_group = Qdn // groups
        for i in range(B):
            t = np.arange(gt_counts[i], dtype=np.int64)
            p = (np.arange(groups, dtype=np.int64)[:, None] * per_group + t).reshape(-1)
            dn_rows.append(i * Qdn + p)
            dn_gts.append(np.tile(gt_offsets[i] + t, groups))
        dn_pos = groups * int(sum(gt_counts))
        pos += [dn_pos] * num_dn_layers
        neg += [dn_pos] * num_dn_layers  # mmdet: neg_inds = pos_inds + half a group
    gt_image = np.repeat(np.arange(B, dtype=np.int64), gt_counts)
    parts = [np.asarray(pos, np.int64), np.asarray(neg, np.int64), gt_image,
             np.concatenate(rows or [np.zeros(0, np.int64)]),
             np.concatenate(gts or [np.zeros(0, np.int64)]),
             np.concatenate(dn_rows or [np.zeros(0, np.int64)]),
             np.concatenate(dn_gts or [np.zeros(0, np.int64)])]
    lengths = [len(p) for p in parts]
    packed = host_to_device(np.concatenate(parts), device)
    pos_t, neg_t, gt_image_t, rows_t, gts_t, dn_rows_t, dn_gts_t = packed.split(lengths)

    # -- targets -------------------------------------------------------------------------
    gt_labels = torch.cat([g.labels for g in batch_gt_instances])
    gt_boxes = torch.cat([g.bboxes for g in batch_gt_instances])
    gt_targets = bbox_xyxy_to_cxcywh(gt_boxes / factors[gt_image_t])
    pred_cls, pred_box, labels, targets, weights, row_factors = [], [], [], [], [], []
    if set_cls:
        labels_m = gt_labels.new_full((num_matched_rows, ), head.num_classes)
        labels_m[rows_t] = gt_labels[gts_t]
        targets_m = gt_boxes.new_zeros((num_matched_rows, 4))
        targets_m[rows_t] = gt_targets[gts_t]
        weights_m = gt_boxes.new_zeros((num_matched_rows, 4))
        weights_m.index_fill_(0, rows_t, 1.0)
        for cls_s, box_s in zip(set_cls, set_bbox):
            pred_cls.append(cls_s.reshape(-1, C))
            pred_box.append(box_s.reshape(-1, 4))
            row_factors.append(factors[:, None].expand(B, cls_s.shape[1], 4).reshape(-1, 4))
        labels.append(labels_m)
        targets.append(targets_m)
        weights.append(weights_m)
    if num_dn_layers:
        Qdn = dn_cls.shape[2]
        labels_dn = gt_labels.new_full((B * Qdn, ), head.num_classes)
        labels_dn[dn_rows_t] = gt_labels[dn_gts_t]
        targets_dn = torch.zeros(B * Qdn, 4, device=device)
        targets_dn[dn_rows_t] = gt_targets[dn_gts_t]
        weights_dn = torch.zeros(B * Qdn, 4, device=device)
        weights_dn.index_fill_(0, dn_rows_t, 1.0)
        pred_cls.append(dn_cls.reshape(-1, C))
        pred_box.append(dn_bbox.reshape(-1, 4))
        labels.append(labels_dn.repeat(num_dn_layers))
        targets.append(targets_dn.repeat(num_dn_layers, 1))
        weights.append(weights_dn.repeat(num_dn_layers, 1))
        row_factors.append(factors[None, :, None].expand(num_dn_layers, B, Qdn, 4)
                           .reshape(-1, 4))
    cls_all = torch.cat(pred_cls)
    box_all = torch.cat(pred_box)
    labels_all = torch.cat(labels)
    targets_all = torch.cat(targets)
    weights_all = torch.cat(weights)
    factors_all = torch.cat(row_factors)

    # -- the three losses over every row, summed per set ----------------------------------
    focal = head.loss_cls(cls_all, labels_all, reduction_override='none')
    l1 = torch.abs(box_all - targets_all) * weights_all
    boxes, boxes_gt = bbox_cxcywh_to_xyxy(box_all) * factors_all, \
        bbox_cxcywh_to_xyxy(targets_all) * factors_all
    if boxes.dtype == torch.float16:  # as mmdet's giou_loss
        iou_loss = (1 - giou(boxes.float(), boxes_gt.float(),
                             head.loss_iou.eps)).to(torch.float16)
    else:
        iou_loss = 1 - giou(boxes, boxes_gt, head.loss_iou.eps)
    iou_loss = iou_loss * weights_all.mean(-1)
    blocks = _blocks(set_cls, B, num_dn_layers, 0 if dn_cls is None else dn_cls.shape[2])
    cls_sums = _set_sums(focal, blocks)
    l1_sums = _set_sums(l1, blocks)
    giou_sums = _set_sums(iou_loss, blocks)

    # -- normalisers: as DETRHead (cls: matched + bg-weighted negatives; boxes: matched) --
    pos_f, neg_f = pos_t.float(), neg_t.float()
    cls_avg = pos_f * 1.0 + neg_f * head.bg_cls_weight
    if head.sync_cls_avg_factor:
        cls_avg = reduce_mean(cls_avg)
    cls_avg = cls_avg.clamp(min=1)
    num_pos = torch.clamp(reduce_mean(pos_f), min=1)
    loss_cls = cls_sums / (cls_avg + EPS)
    loss_bbox = head.loss_bbox.loss_weight * (l1_sums / (num_pos + EPS))
    loss_iou = head.loss_iou.loss_weight * (giou_sums / (num_pos + EPS))

    # keys and order as DINOHead: last decoder layer, d0.. , enc_, dn_ (last), d0.dn_ ..
    S = len(set_cls)
    num_dec = S - 1 if has_enc else S
    keyed = [('', slice(num_dec - 1, num_dec))] + \
        [(f'd{k}.', None) for k in range(num_dec - 1)]
    spans = [slice(num_dec - 1, num_dec), slice(0, num_dec - 1)]
    if has_enc:
        keyed.append(('enc_', None))
        spans.append(slice(num_dec, S))
    if num_dn_layers:
        keyed += [('dn_', None)] + [(f'd{k}.dn_', None) for k in range(num_dn_layers - 1)]
        spans += [slice(S + num_dn_layers - 1, S + num_dn_layers),
                  slice(S, S + num_dn_layers - 1)]
    per_set = torch.stack([loss_cls, loss_bbox, loss_iou], 1)  # (sets, 3)
    packed = torch.cat([per_set[span] for span in spans]).reshape(-1)
    keys = [f'{name}{term}' for name, _ in keyed
            for term in ('loss_cls', 'loss_bbox', 'loss_iou')]
    return PackedLosses(keys, packed)


def _blocks(set_cls, B: int, num_dn_layers: int, Qdn: int) -> List[Tuple[int, int]]:
    """(number of sets, rows per set) of the consecutive row blocks of equal-sized sets."""
    blocks: List[Tuple[int, int]] = []
    for cls_s in set_cls:
        rows = B * cls_s.shape[1]
        if blocks and blocks[-1][1] == rows:
            blocks[-1] = (blocks[-1][0] + 1, rows)
        else:
            blocks.append((1, rows))
    if num_dn_layers:
        blocks.append((num_dn_layers, B * Qdn))
    return blocks


def _set_sums(values: Tensor, blocks: List[Tuple[int, int]]) -> Tensor:
    """Per-set sums of ``values`` (rows first), sets laid out as ``blocks``."""
    sums, start = [], 0
    for num_sets, rows in blocks:
        n = num_sets * rows
        sums.append(values[start:start + n].reshape(num_sets, -1).sum(1))
        start += n
    return torch.cat(sums) if len(sums) > 1 else sums[0]
