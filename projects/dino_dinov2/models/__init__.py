from .activation_checkpoint import checkpoint_layers, is_checkpointed
from .batch_hungarian_assigner import BatchHungarianAssigner
from .batch_matching_dino_head import BatchMatchingDINOHead
from .deformable_attention import (SwitchableMultiScaleDeformableAttention, mmcv_has_cuda_ops,
                                   msda_mmcv, msda_pytorch, resolve_impl,
                                   use_deformable_attention)
from .ema import LeanExpMomentumEMA
from .fast_dino import FastDINO
from .focal_loss import Float32FocalLoss
from .lean_data_preprocessor import LeanDetDataPreprocessor
from .lean_denoising import LeanCdnQueryGenerator
from .triton_deformable_attention import HAS_TRITON, TritonMSDAFunction, msda_triton
from .simple_feature_pyramid import LN2d, SimpleFeaturePyramid
from .timm_backbone import (DINOV2_MODELS, TimmDinov2, TimmDinoViT, WeightFileError,
                            load_weight_file)

__all__ = [
    'TimmDinoViT', 'TimmDinov2', 'SimpleFeaturePyramid', 'LN2d', 'DINOV2_MODELS',
    'WeightFileError',
    'load_weight_file', 'SwitchableMultiScaleDeformableAttention', 'mmcv_has_cuda_ops',
    'msda_mmcv', 'msda_pytorch', 'resolve_impl', 'use_deformable_attention', 'HAS_TRITON',
    'TritonMSDAFunction', 'msda_triton', 'FastDINO', 'BatchHungarianAssigner',
    'BatchMatchingDINOHead', 'checkpoint_layers', 'is_checkpointed', 'Float32FocalLoss',
    'LeanDetDataPreprocessor', 'LeanCdnQueryGenerator', 'LeanExpMomentumEMA'
]
