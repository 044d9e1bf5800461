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

from typing import Dict, List, Optional, Sequence

import torch
from mmengine.model import is_model_wrapper

from .checkpoint import (CheckpointError, check_checkpoint_fits, check_checkpoint_for,
                         fit_problems, model_state_of, read_last_checkpoint)

# parameters whose shape follows the number of classes, by detector part
CLASS_DEPENDENT_PREFIXES = ('bbox_head.cls_branches.', 'dn_query_generator.label_embedding.')


def class_dependent_keys(state_dict: Dict[str, torch.Tensor],
                         prefixes: Sequence[str] = CLASS_DEPENDENT_PREFIXES) -> List[str]:
    return [k for k in state_dict if k.startswith(tuple(prefixes))]


def _plan(model: torch.nn.Module, path: str):
    """(state dict to load, re-initialised keys) for fine-tuning ``model`` from ``path``;
    :class:`CheckpointError` for anything else that does not fit."""
    state = model_state_of(check_checkpoint_for(path, '--load-from'))
    own = model.state_dict()
    classwise = set(class_dependent_keys(own))
    problems = fit_problems(model, state)
    reinit = [k for k, _ in problems if k in classwise and k in state and k in own]
    others = [text for k, text in problems if k not in reinit]
    if others:
        more = f' (and {len(others) - 1} more)' if len(others) > 1 else ''
        raise CheckpointError(f'--load-from {path}: does not fit this model: {others[0]}'
                              f'{more}; is it a checkpoint of this config\'s detector?')
    return state, reinit


def check_fine_tuning(model: torch.nn.Module, path: str) -> None:
    """The checks of :func:`load_for_fine_tuning` without loading (``tools/train.py`` runs
    them before training starts)."""
    _plan(model, path)


def load_for_fine_tuning(model: torch.nn.Module, path: str) -> str:
    """Load ``path`` into ``model`` by the rule of the module docstring; returns the log
    line (tensors loaded, those re-initialised)."""
    state, reinit = _plan(model, path)
    own = model.state_dict()
    model.load_state_dict({k: v for k, v in state.items() if k not in reinit}, strict=False)
    line = f'fine-tuning from {path}: {len(own) - len(reinit)} of {len(own)} tensors loaded'
    if reinit:
        # classification weights and the label embedding: (classes, ...)
        counts = f'{state[reinit[0]].shape[0]} -> {own[reinit[0]].shape[0]} classes'
        line += f'; re-initialized for the new class count ({counts}): {", ".join(reinit)}'
    return line


def enable_fine_tuning(cfg, checkpoint: str) -> None:
    """``--load-from CKPT``: a :class:`FineTuneLoadHook` instead of mmengine's non-strict
    ``load_from``."""
    cfg.load_from = None
    hooks = [h for h in (cfg.get('custom_hooks', None) or [])
             if h.get('type') != 'FineTuneLoadHook']
    cfg.custom_hooks = hooks + [dict(type='FineTuneLoadHook', checkpoint=checkpoint)]


def check_run_checkpoints(runner, load_from: Optional[str] = None,
                          test_checkpoint: Optional[str] = None) -> None:
    """Before a run starts: the checkpoint it resumes from (``runner``'s resume setting),
    fine-tunes from (``load_from``) or tests (``test_checkpoint``) must fit its model."""
    model = runner.model.module if is_model_wrapper(runner.model) else runner.model
    resume = runner._resume  # mmengine's: True, with load_from a path or None (auto)
    if resume:
        path = runner._load_from or _latest(runner.work_dir)
        if path:
            check_checkpoint_fits(model, path, '--resume')
    if load_from:
        check_fine_tuning(model, load_from)
    if test_checkpoint:
        check_checkpoint_fits(model, test_checkpoint, 'test')


def _latest(work_dir: str) -> Optional[str]:
    return read_last_checkpoint(work_dir) or None
