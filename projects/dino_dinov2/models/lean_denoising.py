"""mmdet's denoising-query generator with the host-known numbers kept on the host.

``CdnQueryGenerator`` copies each image's size to the device (``new_tensor``), counts
the boxes per image on the device and reads the counts back (``torch.sum(batch_idx ==
i)``, ``max``, ``int``), and builds the attention mask group by group, each slice set from
a host scalar. The box counts and sizes are known on the host: :class:`LeanCdnQueryGenerator`
computes the query placement there and sends sizes and indices in one pinned copy, and
builds the mask from a group index in a few operations. The noise is drawn by mmdet's own
functions in the same order, so a seeded step gives the same queries, to the bit.
(mmdet's label noise keeps its ``nonzero``: the number of relabelled boxes is drawn at
random, and drawing it otherwise would change the random stream.)
"""
from __future__ import annotations

from typing import Tuple

import numpy as np
import torch
from mmdet.models.layers.transformer.dino_layers import CdnQueryGenerator
from torch import Tensor

from .host_data import host_to_device


class LeanCdnQueryGenerator(CdnQueryGenerator):
    """``CdnQueryGenerator`` (same arguments, same outputs) without host round trips."""

    def __call__(self, batch_data_samples: list) -> tuple:
        counts = [len(s.gt_instances) for s in batch_data_samples]
        batch_size = len(batch_data_samples)
        max_num_target = max(counts)
        num_groups = self.get_num_groups(max_num_target)
        sizes = [[s.img_shape[1], s.img_shape[0]] * 2 for s in batch_data_samples]
        # where each (group, image, box) query goes: as collate_dn_queries computes it
        batch_idx = np.repeat(np.arange(batch_size, dtype=np.int64), counts)
        within = np.concatenate([np.arange(n, dtype=np.int64) for n in counts] or
                                [np.zeros(0, np.int64)])
        query_index = np.concatenate(
            [within + max_num_target * i for i in range(2 * num_groups)] or
            [np.zeros(0, np.int64)])
        batch_expand = np.tile(batch_idx, 2 * num_groups)
        device = batch_data_samples[0].gt_instances.bboxes.device
        packed = host_to_device(np.concatenate(
            [np.asarray(sizes, np.int64).reshape(-1), batch_expand, query_index]), device)
        factors, batch_expand_t, query_index_t = packed.split(
            [4 * batch_size, len(batch_expand), len(query_index)])
        factors = factors.view(batch_size, 4)

        gt_labels_list, gt_bboxes_list = [], []
        for i, sample in enumerate(batch_data_samples):
            bboxes = sample.gt_instances.bboxes
            gt_bboxes_list.append(bboxes / factors[i:i + 1].to(bboxes.dtype))
            gt_labels_list.append(sample.gt_instances.labels)
        gt_labels = torch.cat(gt_labels_list)
        gt_bboxes = torch.cat(gt_bboxes_list)

        dn_label_query = self.generate_dn_label_query(gt_labels, num_groups)
        dn_bbox_query = self.generate_dn_bbox_query(gt_bboxes, num_groups)

        num_denoising_queries = int(max_num_target * 2 * num_groups)
        batched_label_query, batched_bbox_query = self.collate_dn_queries(
            dn_label_query, dn_bbox_query, (batch_expand_t, query_index_t), batch_size,
            num_denoising_queries)

        attn_mask = self.generate_dn_mask(max_num_target, num_groups,
                                          device=dn_label_query.device)
        dn_meta = dict(num_denoising_queries=num_denoising_queries,
                       num_denoising_groups=num_groups)
        return batched_label_query, batched_bbox_query, attn_mask, dn_meta

    def collate_dn_queries(self, input_label_query: Tensor, input_bbox_query: Tensor,
                           mapper: Tuple[Tensor, Tensor], batch_size: int,
                           num_denoising_queries: int) -> Tuple[Tensor, Tensor]:
        """mmdet's collation from ``mapper``: the (image, slot) of each query, placed
        from the host's box counts (mmdet counts them on the device and reads them back).
        Returns (B, num_denoising_queries, embed_dims) and (B, num_denoising_queries, 4)."""
        device = input_label_query.device
        batched_label_query = torch.zeros(batch_size, num_denoising_queries, self.embed_dims,
                                          device=device)
        batched_bbox_query = torch.zeros(batch_size, num_denoising_queries, 4, device=device)
        batched_label_query[mapper] = input_label_query
        batched_bbox_query[mapper] = input_bbox_query
        return batched_label_query, batched_bbox_query

    def generate_dn_mask(self, max_num_target: int, num_groups: int, device) -> Tensor:
        """mmdet's mask (True: cannot see): the matching queries do not see the denoising
        ones; a denoising group sees itself and the matching queries only."""
        num_denoising_queries = int(max_num_target * 2 * num_groups)
        total = num_denoising_queries + self.num_matching_queries
        attn_mask = torch.zeros(total, total, device=device, dtype=torch.bool)
        attn_mask[num_denoising_queries:, :num_denoising_queries].fill_(True)
        if num_denoising_queries:
            group = torch.arange(num_denoising_queries, device=device) // (2 * max_num_target)
            attn_mask[:num_denoising_queries, :num_denoising_queries] = \
                group[:, None] != group[None, :]
        return attn_mask
