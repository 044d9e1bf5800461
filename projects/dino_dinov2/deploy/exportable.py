"""One graph from image to detections: this project's detector wrapped for export.

``ExportableDetector`` takes float32 RGB images in 0-255 at the export size, normalizes
them inside the graph, runs the detector's own backbone, pyramid, transformer and head
(deformable attention on a pure-PyTorch path, ``grid_sample``, which any ONNX runtime
has: ``deform_attn_impl='onnx'``, laid out for the runtimes, or ``'pytorch'``, mmcv's;
or ``'openvino'``, one fused node for OpenVINO with the project's extension),
and ends with the head's post-processing: sigmoid, the top ``K`` of queries x classes
(``K = test_cfg.max_per_img``, at most queries x classes), boxes as x1y1x2y2 in input
pixels, clipped to the image. Shapes that the detector computes from the data
(feature sizes, level start indices, reference grids) are fixed by the export size:
traced, they become constants of the graph.
"""
from __future__ import annotations

import copy
from typing import Tuple

import torch
import torch.nn as nn
from torch import Tensor


def fix_position_embedding(vit: nn.Module, height: int, width: int) -> None:
    """A timm ViT with a dynamic image size, fixed at ``height`` x ``width``.

    With ``dynamic_img_size`` timm resamples the absolute position embedding to the
    token grid at every forward (bicubic with antialiasing: no ONNX operator, and a
    constant at a fixed size anyway). Here it is resampled once, by the same function,
    and the ViT runs as a fixed-size one: the same numbers, no resampling in the graph.
    Models without an absolute position embedding (DINOv3's rotary one) are left as
    they are.
    """
    from timm.layers import resample_abs_pos_embed
    if getattr(vit, 'pos_embed', None) is None or not getattr(vit, 'dynamic_img_size', False):
        return
    grid = vit.patch_embed.dynamic_feat_size((height, width))
    prefix = 0 if vit.no_embed_class else vit.num_prefix_tokens
    with torch.no_grad():
        pos = resample_abs_pos_embed(vit.pos_embed, new_size=grid,
                                     old_size=vit.patch_embed.grid_size,
                                     num_prefix_tokens=prefix)
    vit.pos_embed = nn.Parameter(pos, requires_grad=False)
    vit.dynamic_img_size = False
    vit.patch_embed.flatten = True  # tokens as (B, L, C), what the fixed-size path adds to


class ExportableDetector(nn.Module):
    """``images`` (N, 3, H, W) float32 RGB 0-255 -> ``boxes`` (N, K, 4) x1y1x2y2 in input
    pixels, ``scores`` (N, K), ``labels`` (N, K) int64.

    Args:
        model: a built ``FastDINO`` (eval mode) whose deformable attention runs a PyTorch
            path on the CPU (``deform_attn_impl`` ``'onnx'``, what
            :func:`.onnx_export.load_model` builds, ``'pytorch'``, ``'openvino'`` or
            ``'auto'``).
        height, width: the export size (every image the graph sees has it).
    """

    def __init__(self, model: nn.Module, height: int, width: int) -> None:
        super().__init__()
        from ..models import DeformableAttention, resolve_impl
        impls = {m.impl for m in model.modules() if isinstance(m, DeformableAttention)}
        if any(resolve_impl(i, torch.device('cpu')) not in ('onnx', 'pytorch', 'openvino')
               for i in impls):
            raise ValueError(f'export traces a PyTorch deformable attention (GridSample); '
                             f'this model runs {sorted(impls)}: build it with '
                             "model.deform_attn_impl='onnx'")
        model = copy.deepcopy(model).eval()  # the caller's model is not changed
        fix_position_embedding(model.backbone.vit, int(height), int(width))
        self.model = model
        self.height, self.width = int(height), int(width)
        pre = model.data_preprocessor
        # the preprocessor's mean/std are in the order it normalizes (RGB after bgr_to_rgb)
        self.register_buffer('mean', pre.mean.detach().clone().view(1, 3, 1, 1).float())
        self.register_buffer('std', pre.std.detach().clone().view(1, 3, 1, 1).float())
        head = model.bbox_head
        self.num_classes = head.num_classes
        self.topk = min(int(head.test_cfg.get('max_per_img', 100)),
                        model.num_queries * head.num_classes)

    def _samples(self, batch: int):
        from mmdet.structures import DetDataSample
        shape = (self.height, self.width)
        return [DetDataSample(metainfo=dict(img_shape=shape, batch_input_shape=shape,
                                            pad_shape=shape)) for _ in range(batch)]

    def forward(self, images: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        x = (images - self.mean) / self.std
        feats = self.model.extract_feat(x)
        head_inputs = self.model.forward_transformer(feats, self._samples(images.shape[0]))
        cls_scores, bbox_preds = self.model.bbox_head(head_inputs['hidden_states'],
                                                      head_inputs['references'])
        logits, boxes = cls_scores[-1], bbox_preds[-1]  # (N, Q, C), (N, Q, 4) cxcywh 0..1
        scores, index = logits.sigmoid().flatten(1).topk(self.topk, dim=1)
        labels = index % self.num_classes
        query = torch.div(index, self.num_classes, rounding_mode='floor')
        boxes = torch.gather(boxes, 1, query.unsqueeze(-1).expand(-1, -1, 4))
        cx, cy, w, h = boxes.unbind(-1)
        xyxy = torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], -1)
        scale = xyxy.new_tensor([self.width, self.height, self.width, self.height])
        xyxy = torch.minimum((xyxy * scale).clamp(min=0), scale)
        return xyxy, scores, labels
