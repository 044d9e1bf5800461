"""dino-dinov2: DINO detectors on DINOv2 backbones for MMDetection 3.x.

Importing the package registers its modules in mmdet's registries (configs load it
with ``custom_imports``) and makes mmengine's checkpoints load on torch >= 2.6.
"""
from . import datasets, engine, evaluation, models  # noqa: F401  (registration)

__version__ = '0.1.0'
