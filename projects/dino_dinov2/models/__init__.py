from .batch_hungarian_assigner import BatchHungarianAssigner
from .batch_matching_dino_head import BatchMatchingDINOHead
from .deformable_attention import (DeformableAttention, mmcv_has_cuda_ops, msda_mmcv,
                                   msda_pytorch, resolve_impl)
from .ema import LeanExpMomentumEMA
from .fast_dino import FastDINO
from .lean_data_preprocessor import LeanDetDataPreprocessor
from .lean_denoising import LeanCdnQueryGenerator
from .lean_losses import PackedLogVars, PackedLosses
from .simple_feature_pyramid import LN2d, SimpleFeaturePyramid
from .timm_backbone import DINOV2_MODELS, TimmDinov2, WeightFileError, load_weight_file
from .transformer import (DeformableDecoderLayer, DeformableEncoder, DeformableEncoderLayer,
                          DinoDecoder)
from .triton_deformable_attention import HAS_TRITON, TritonMSDAFunction, msda_triton

__all__ = [
    'TimmDinov2', 'SimpleFeaturePyramid', 'LN2d', 'DINOV2_MODELS', 'WeightFileError',
    'load_weight_file', 'DeformableAttention', 'mmcv_has_cuda_ops', 'msda_mmcv',
    'msda_pytorch', 'resolve_impl', 'HAS_TRITON', 'TritonMSDAFunction', 'msda_triton',
    'FastDINO', 'BatchHungarianAssigner', 'BatchMatchingDINOHead', 'LeanDetDataPreprocessor',
    'LeanCdnQueryGenerator', 'LeanExpMomentumEMA', 'PackedLosses', 'PackedLogVars',
    'DeformableEncoder', 'DeformableEncoderLayer', 'DeformableDecoderLayer', 'DinoDecoder'
]
