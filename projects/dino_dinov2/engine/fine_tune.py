"""Fine-tuning from a detector checkpoint: every tensor loaded, or an error naming it.

mmengine's ``load_from`` loads non-strictly: a tensor whose shape differs (a checkpoint
of another class count, another backbone) is skipped with a warning among many lines,
and training goes on from a model that is partly random. ("size mismatch for
class_embed" is among the most asked questions of DETR fine-tuning.)
:class:`FineTuneLoadHook` loads the checkpoint itself, with one rule: every tensor of the
model comes from the checkpoint, except the class-dependent ones when the class count
differs (the classification branches and DINO's denoising label embedding,
:func:`class_dependent_keys`), which keep their fresh initialisation and are listed in one
log line. Anything else that does not match is a :class:`CheckpointError` naming the key.
"""
from __future__ import annotations

from typing import Dict, List, Sequence

import torch
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS

from .checked_checkpoint import CheckpointError, load_local_checkpoint

# parameters whose shape follows the number of classes, by detector part
CLASS_DEPENDENT_PREFIXES = ('bbox_head.cls_branches.', 'dn_query_generator.label_embedding.')


def class_dependent_keys(state_dict: Dict[str, torch.Tensor],
                         prefixes: Sequence[str] = CLASS_DEPENDENT_PREFIXES) -> List[str]:
    return [k for k in state_dict if k.startswith(tuple(prefixes))]


def _state_dict_of(checkpoint, path: str) -> Dict[str, torch.Tensor]:
    state = checkpoint.get('state_dict', checkpoint) if isinstance(checkpoint, dict) else None
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise CheckpointError(f'--load-from {path}: not a model checkpoint (no state dict of '
                              'tensors in it)')
    return {k[len('module.'):] if k.startswith('module.') else k: v for k, v in state.items()}


def load_for_fine_tuning(model: torch.nn.Module, path: str) -> str:
    """Load ``path`` into ``model`` by the rule of the module docstring; returns the log
    line (tensors loaded, those re-initialised)."""
    state = _state_dict_of(load_local_checkpoint(path, map_location='cpu'), path)
    own = model.state_dict()
    classwise = set(class_dependent_keys(own))
    reinit, problems = [], []
    for key, value in own.items():
        if key not in state:
            problems.append(f'{key} is not in the checkpoint')
        elif state[key].shape != value.shape:
            if key in classwise:
                reinit.append(key)
            else:
                problems.append(f'{key} has shape {tuple(state[key].shape)} there, '
                                f'{tuple(value.shape)} in this model')
    problems += [f'{key} is in the checkpoint, not in this model'
                 for key in state if key not in own]
    if problems:
        more = f' (and {len(problems) - 1} more)' if len(problems) > 1 else ''
        raise CheckpointError(f'--load-from {path}: does not fit this model: {problems[0]}'
                              f'{more}; is it a checkpoint of this config\'s detector?')
    model.load_state_dict({k: v for k, v in state.items() if k not in reinit}, strict=False)
    line = f'fine-tuning from {path}: {len(own) - len(reinit)} of {len(own)} tensors loaded'
    if reinit:
        # classification weights and the label embedding: (classes, ...)
        counts = f'{state[reinit[0]].shape[0]} -> {own[reinit[0]].shape[0]} classes'
        line += f'; re-initialized for the new class count ({counts}): {", ".join(reinit)}'
    return line


@HOOKS.register_module()
class FineTuneLoadHook(Hook):
    """Load ``checkpoint`` into the model before the first iteration (not when resuming).

    Runs after the Runner initialised the weights, so the re-initialised tensors hold a
    fresh initialisation.
    """
    priority = 'VERY_HIGH'

    def __init__(self, checkpoint: str) -> None:
        self.checkpoint = checkpoint

    def before_train(self, runner) -> None:
        if getattr(runner, '_resume', False) or runner.iter > 0:
            runner.logger.info(f'FineTuneLoadHook: resuming; {self.checkpoint} not loaded')
            return
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        runner.logger.info(load_for_fine_tuning(model, self.checkpoint))


def enable_fine_tuning(cfg, checkpoint: str) -> None:
    """``--load-from CKPT``: a :class:`FineTuneLoadHook` instead of mmengine's non-strict
    ``load_from``."""
    cfg.load_from = None
    hooks = [h for h in (cfg.get('custom_hooks', None) or [])
             if h.get('type') != 'FineTuneLoadHook']
    cfg.custom_hooks = hooks + [dict(type='FineTuneLoadHook', checkpoint=checkpoint)]
