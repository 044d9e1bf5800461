"""The project's models, registered in mmdet's registries on import (names re-exported)."""
# flake8: noqa: F401
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
