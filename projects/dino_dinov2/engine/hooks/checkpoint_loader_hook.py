"""``CheckpointLoaderHook``: installs this project's checkpoint loader when a Runner is built.

torch >= 2.6 loads with ``weights_only=True`` by default and mmengine 0.10 calls
``torch.load`` without the argument, so ``--resume`` and ``load_from`` fail on the objects
MMEngine itself saves. :func:`checkpoint.install_checkpoint_loader` makes
:func:`checkpoint.load_local_checkpoint` (``weights_only=True`` with those few classes
allowed, one-line errors) mmengine's loader for local paths. Importing the package does not
do it: ``configs/_base_/default_runtime.py`` declares this hook (``default_hooks``), which is
built with the Runner, before the Runner reads any checkpoint, so mmdet's own
``tools/train.py --resume`` and ``tools/test.py`` on these configs load through it too.
"""
from __future__ import annotations

from mmengine.hooks import Hook
from mmengine.registry import HOOKS

from ...checkpoint import install_checkpoint_loader


@HOOKS.register_module()
class CheckpointLoaderHook(Hook):
    """Installs the checked checkpoint loader when built (the Runner's ``__init__``: before
    ``load_or_resume``); does nothing afterwards."""
    priority = 'VERY_HIGH'

    def __init__(self) -> None:
        install_checkpoint_loader()
