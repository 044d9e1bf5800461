"""dino-dinov2: DINO detectors on DINOv2 backbones for MMDetection 3.x.

Importing the package registers its modules in mmdet's and mmengine's registries (configs
load it with ``custom_imports``) and changes nothing else process-wide: the checkpoint
loader for older checkpoints is installed by what loads (``CheckpointLoaderHook`` in
``configs/_base_/default_runtime.py``, the tools). Layers, lowest first: errors <
upstream < checkpoint < original_checkpoint < models, datasets < evaluation < engine < cli
< deploy (README, Architecture).
"""
from . import datasets, engine, evaluation, models, upstream  # noqa: F401  (registration)

__version__ = '0.1.0'
