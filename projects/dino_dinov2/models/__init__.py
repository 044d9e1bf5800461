from .activation_checkpoint import checkpoint_layers, is_checkpointed
from .batch_hungarian_assigner import BatchHungarianAssigner
from .batch_matching_dino_head import BatchMatchingDINOHead
from .deformable_attention import (Float32SafeMSDAFunction, float32_safe_msda_pytorch,
                                   install_float32_safe_msda)
from .fast_dino import FastDINO
from .reference_deformable_attention import (ReferenceMultiScaleDeformableAttention,
                                             use_reference_deformable_attention)
from .simple_feature_pyramid import LN2d, SimpleFeaturePyramid
from .timm_dinov2 import DINOV2_MODELS, TimmDinov2, WeightFileError, load_weight_file

__all__ = [
    'TimmDinov2', 'SimpleFeaturePyramid', 'LN2d', 'DINOV2_MODELS', 'WeightFileError',
    'load_weight_file', 'Float32SafeMSDAFunction', 'float32_safe_msda_pytorch',
    'install_float32_safe_msda', 'FastDINO', 'BatchHungarianAssigner',
    'BatchMatchingDINOHead', 'ReferenceMultiScaleDeformableAttention',
    'use_reference_deformable_attention', 'checkpoint_layers', 'is_checkpointed'
]
