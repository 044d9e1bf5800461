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

from ..checkpoint import (CheckpointError, check_checkpoint_fits, check_checkpoint_for,
                          checkpoint_kind, describe_weights, fit_problems, model_state_of,
                          read_last_checkpoint)
from ..upstream.runner import checkpoint_to_load, resuming

# parameters whose shape follows the number of classes, by detector part
CLASS_DEPENDENT_PREFIXES = ('bbox_head.cls_branches.', 'dn_query_generator.label_embedding.')


def class_dependent_keys(state_dict: Dict[str, torch.Tensor],
                         prefixes: Sequence[str] = CLASS_DEPENDENT_PREFIXES) -> List[str]:
    return [k for k in state_dict if k.startswith(tuple(prefixes))]


def _plan(model: torch.nn.Module, path: str, classes: Optional[Sequence[str]] = None):
    """(state dict to load, re-initialised keys, conversion note) for fine-tuning ``model``
    from ``path``; :class:`CheckpointError` for anything else that does not fit.

    The original's detectron2/detrex checkpoint is converted in memory
    (``original_checkpoint.py``; its class rows in ``classes``' order when those are
    COCO's 80)."""
    obj = check_checkpoint_for(path, '--load-from')
    note = ''
    if checkpoint_kind(obj) == 'detectron2':
        state, note = _convert_original(model, path, obj, classes)
    else:
        state = model_state_of(obj)
    own = model.state_dict()
    classwise = set(class_dependent_keys(own))
    problems = fit_problems(model, state)
    reinit = [k for k, _ in problems if k in classwise and k in state and k in own]
    others = [text for k, text in problems if k not in reinit]
    if others:
        more = f' (and {len(others) - 1} more)' if len(others) > 1 else ''
        raise CheckpointError(f'--load-from {path}: does not fit this model: {others[0]}'
                              f'{more}; is it a checkpoint of this config\'s detector?')
    return state, reinit, note


def _convert_original(model: torch.nn.Module, path: str, obj: dict,
                      classes: Optional[Sequence[str]]):
    """The original's checkpoint in this project's names (shapes are checked by the
    caller: class-dependent tensors may differ)."""
    from ..checkpoint import original_state_of
    from ..original_checkpoint import ConversionError, coco_order, convert_state
    state = original_state_of(obj)
    if state is None:
        raise ConversionError(f'--load-from {path}: a detectron2/detrex checkpoint, but not of '
                              'the original DINO (no transformer.level_embeds, '
                              'transformer.tgt_embed, label_enc): this project loads only '
                              'that one')
    classes = coco_order(classes)
    pre = getattr(model, 'data_preprocessor', None)
    mean = getattr(pre, 'mean', None)
    std = getattr(pre, 'std', None)
    try:
        out, info = convert_state(state, None, classes=classes,
                                  mean=None if mean is None else mean.flatten().tolist(),
                                  std=None if std is None else std.flatten().tolist())
    except ConversionError as e:
        raise ConversionError(f'--load-from {path}: {e}') from None
    return out, (f' (the original\'s detectron2/detrex checkpoint, converted in memory: '
                 f'{info["converted"]} tensors)')


def check_fine_tuning(model: torch.nn.Module, path: str,
                      classes: Optional[Sequence[str]] = None) -> None:
    """The checks of :func:`load_for_fine_tuning` without loading (``tools/train.py`` runs
    them before training starts)."""
    _plan(model, path, classes)


def load_for_fine_tuning(model: torch.nn.Module, path: str,
                         classes: Optional[Sequence[str]] = None) -> str:
    """Load ``path`` into ``model`` by the rule of the module docstring; returns the log
    line (tensors loaded, those re-initialised). ``classes``: the run's class names."""
    state, reinit, note = _plan(model, path, classes)
    own = model.state_dict()
    model.load_state_dict({k: v for k, v in state.items() if k not in reinit}, strict=False)
    line = (f'fine-tuning from {path}{note}: {len(own) - len(reinit)} of {len(own)} tensors '
            'loaded')
    if reinit:
        # classification weights and the label embedding: (classes, ...)
        counts = f'{state[reinit[0]].shape[0]} -> {own[reinit[0]].shape[0]} classes'
        line += f'; re-initialized for the new class count ({counts}): {", ".join(reinit)}'
    return line


def check_run_checkpoints(runner, load_from: Optional[str] = None,
                          test_checkpoint: Optional[str] = None) -> None:
    """Before a run starts: the checkpoint it resumes from (``runner``'s resume setting),
    fine-tunes from (``load_from``) or tests (``test_checkpoint``) must fit its model."""
    model = runner.model.module if is_model_wrapper(runner.model) else runner.model
    if resuming(runner):  # load_from: a path, or None (the latest)
        path = checkpoint_to_load(runner) or _latest(runner.work_dir)
        if path:
            check_checkpoint_fits(model, path, '--resume')
    if load_from:
        check_fine_tuning(model, load_from, run_classes(runner.cfg))
    if test_checkpoint:
        obj = check_checkpoint_fits(model, test_checkpoint, 'test')
        runner.logger.info(f'testing {test_checkpoint}: {describe_weights(obj)}')


def _latest(work_dir: str) -> Optional[str]:
    return read_last_checkpoint(work_dir) or None


def run_classes(cfg) -> Optional[Sequence[str]]:
    """The class names a run's config trains, or None (``original_checkpoint``)."""
    from ..original_checkpoint import config_classes
    try:
        return config_classes(cfg)
    except Exception:  # noqa: BLE001 - an unregistered dataset type: no class order
        return None
