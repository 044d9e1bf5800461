"""Activation checkpointing of transformer layers (memory for compute).

mmdet's DINO encoder and decoder call their layers in loops inside ``forward`` and
take no checkpointing option, and wrapping a layer in another module would rename its
state-dict keys (old checkpoints would stop loading). :func:`checkpoint_layers` instead
gives each layer an instance-level ``forward`` that runs the class's forward through
``torch.utils.checkpoint`` (non-reentrant): the layer's activations are recomputed in
backward instead of stored. Parameters, keys and results are unchanged; gradients are
equal to the plain run's (dropout RNG state is replayed).
"""
from __future__ import annotations

import types
from typing import Iterable

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint


def _checkpointed_forward(self: nn.Module, *args, **kwargs):
    # Bound to the layer with MethodType, so deepcopy (EMA) rebinds it to the copy.
    forward = type(self).forward.__get__(self)
    if self.training and torch.is_grad_enabled():
        return checkpoint(forward, *args, use_reentrant=False, **kwargs)
    return forward(*args, **kwargs)


def checkpoint_layers(layers: Iterable[nn.Module]) -> int:
    """Checkpoint each module of ``layers`` in training; returns how many."""
    count = 0
    for layer in layers:
        layer.forward = types.MethodType(_checkpointed_forward, layer)
        count += 1
    return count


def is_checkpointed(layer: nn.Module) -> bool:
    fwd = layer.__dict__.get('forward')
    return isinstance(fwd, types.MethodType) and fwd.__func__ is _checkpointed_forward
