"""mmdet's focal loss, computed in float32 under mixed precision.

Upstream: mmcv 2.1.0's ``sigmoid_focal_loss`` CUDA kernel has no bfloat16 version
(open-mmlab/mmcv#3061, open). Delete when mmcv's kernel takes bfloat16.
"""
import torch
from mmdet.models.losses import FocalLoss
from mmdet.registry import MODELS


@MODELS.register_module()
class Float32FocalLoss(FocalLoss):
    """mmdet's ``FocalLoss`` (same arguments), its logits cast to float32.

    Under AMP the classification logits arrive in bfloat16 or float16. On a GPU mmdet's
    ``FocalLoss`` calls mmcv's CUDA kernel, which has no bfloat16 version: a bf16 run
    stopped at its first step (``NotImplementedError: "sigmoid_focal_loss_forward_cuda_kernel"
    not implemented for 'BFloat16'``). The original (detrex) computed the loss through
    ``binary_cross_entropy_with_logits``, which autocast runs in float32; so does this, on
    every device. float32 logits are passed on untouched: the same numbers as ``FocalLoss``.
    """

    def forward(self, pred, target, weight=None, avg_factor=None, reduction_override=None):
        if pred.dtype in (torch.float16, torch.bfloat16):
            pred = pred.float()
        return super().forward(pred, target, weight=weight, avg_factor=avg_factor,
                               reduction_override=reduction_override)
