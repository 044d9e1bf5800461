"""An optimizer with few parameter groups, one fused update, and no host read of the norm.

mmengine's ``DefaultOptimWrapperConstructor`` makes one parameter group per parameter as
soon as ``paramwise_cfg`` is set (333 for the DINO recipe): AdamW then runs hundreds of
single-tensor updates, each several kernel launches, and reads every ``step`` back. And
``OptimWrapper._clip_grad`` logs ``float(grad_norm)``: the host waits for the backward
pass to finish before it can launch the optimizer.

:class:`LeanOptimWrapperConstructor` builds the same optimizer (same per-parameter lr,
weight decay and the rest, so the same updates) with:

- ``merge_groups``: the groups whose settings are all equal merged into one (a handful for
  the recipe: backbone/pyramid at lr x0.1 with and without decay, the rest likewise);
- ``fused``: ``None`` (or ``'auto'``) asks torch's fused kernel (one launch per group) where the
  optimizer has one and every parameter lives on a device it supports (CUDA, CPU), unless
  the config sets ``fused`` or ``foreach`` itself;
- ``defer_grad_norm``: the gradient is clipped exactly as before, but the norm stays a
  device tensor (``clip_func.last_norm``); the run's log hook
  (:class:`~..hooks.deferred_log_hook.DeferredLogHook`) copies it with the losses once per
  log interval.

A checkpoint written with the unmerged groups (an older run) is regrouped when it is
loaded (its per-parameter state is moved to the merged layout), so ``--resume`` keeps
working across the change.
"""
from __future__ import annotations

import inspect
import logging
from typing import Dict, List, Optional

import torch
from mmengine.logging import print_log
from mmengine.optim import DefaultOptimWrapperConstructor
from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS

from ..errors import ConfigError

_OPTIONS = ('merge_groups', 'fused', 'defer_grad_norm')


class DeferredClipGradNorm:
    """``torch.nn.utils.clip_grad_norm_`` that keeps the norm on the device.

    Returns ``None`` (mmengine then logs nothing itself); the last norm is ``last_norm``.
    """

    def __init__(self) -> None:
        self.last_norm: Optional[torch.Tensor] = None

    def __call__(self, params, **kwargs):
        kwargs.setdefault('foreach', None)
        self.last_norm = torch.nn.utils.clip_grad_norm_(params, **kwargs).detach()
        return None


def merge_param_groups(groups: List[dict]) -> List[dict]:
    """Groups with equal settings (every key but ``params``) merged, in order of first
    appearance; each parameter keeps its settings."""
    merged: Dict[tuple, dict] = {}
    for group in groups:
        key = tuple(sorted((k, repr(v)) for k, v in group.items() if k != 'params'))
        if key not in merged:
            merged[key] = dict(group, params=[])
        merged[key]['params'].extend(group['params'])
    return list(merged.values())


def _fused_supported(optimizer_cls, params) -> bool:
    if 'fused' not in inspect.signature(optimizer_cls).parameters:
        return False
    devices = {p.device.type for p in params}
    dtypes = {p.dtype for p in params}
    return bool(devices) and devices <= {'cuda', 'cpu'} and len(devices) == 1 and \
        dtypes <= {torch.float32, torch.float16, torch.bfloat16, torch.float64}


def regroup_state_dict(state_dict: dict, old_groups: List[List[int]],
                       new_groups: List[List[int]]) -> dict:
    """An optimizer state dict saved with ``old_groups`` (parameter ids per group, the
    unmerged layout) rewritten for ``new_groups`` (the same ids, merged)."""
    old_index = {pid: i for i, pid in enumerate(p for g in old_groups for p in g)}
    group_of = {pid: gi for gi, g in enumerate(old_groups) for pid in g}
    state, groups, new_i = {}, [], 0
    saved_groups = state_dict['param_groups']
    for members in new_groups:
        template = dict(saved_groups[group_of[members[0]]])
        template['params'] = []
        for pid in members:
            old = old_index[pid]
            if old in state_dict['state']:
                state[new_i] = state_dict['state'][old]
            template['params'].append(new_i)
            new_i += 1
        groups.append(template)
    return dict(state=state, param_groups=groups)


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class LeanOptimWrapperConstructor(DefaultOptimWrapperConstructor):
    """``DefaultOptimWrapperConstructor`` with merged groups, a fused update and the
    gradient norm kept on the device (module doc).

    Options, in ``paramwise_cfg`` (mmengine hands the constructor nothing else):
    ``merge_groups`` (default True), ``fused`` (None = where the device has one, True or
    False; default None), ``defer_grad_norm`` (default True).
    """

    def __init__(self, optim_wrapper_cfg: dict, paramwise_cfg: Optional[dict] = None):
        paramwise_cfg = dict(paramwise_cfg or {})
        self.merge_groups = bool(paramwise_cfg.pop('merge_groups', True))
        self.fused = paramwise_cfg.pop('fused', None)
        self.defer_grad_norm = bool(paramwise_cfg.pop('defer_grad_norm', True))
        if self.fused == 'auto':
            self.fused = None
        if self.fused not in (None, True, False):
            raise ConfigError(f'paramwise_cfg.fused must be None (where the device has it), '
                              f'True or False, got {self.fused!r}')
        super().__init__(optim_wrapper_cfg, paramwise_cfg or None)

    def __call__(self, model):
        from mmengine.registry import OPTIM_WRAPPERS, OPTIMIZERS
        if hasattr(model, 'module'):
            model = model.module
        optimizer_cfg = self.optimizer_cfg.copy()
        optimizer_cls = optimizer_cfg['type']
        if isinstance(optimizer_cls, str):
            with OPTIMIZERS.switch_scope_and_registry(None) as registry:
                optimizer_cls = registry.get(optimizer_cfg['type'])
        first_arg = next(iter(inspect.signature(optimizer_cls).parameters))
        groups: List[dict] = []
        if self.paramwise_cfg:
            self.add_params(groups, model)
        else:
            groups = [dict(params=[p for p in model.parameters()])]
        unmerged = [[id(p) for p in g['params']] for g in groups]
        if self.merge_groups:
            groups = merge_param_groups(groups)
        trainable = [p for g in groups for p in g['params'] if p.requires_grad]
        how = 'default'
        if 'fused' in optimizer_cfg or 'foreach' in optimizer_cfg:
            how = ('fused' if optimizer_cfg.get('fused') else
                   'foreach' if optimizer_cfg.get('foreach') else 'per tensor')
        elif self.fused is not False and _fused_supported(optimizer_cls, trainable):
            optimizer_cfg['fused'] = True
            how = 'fused'
        elif self.fused is True:
            raise ConfigError(f'paramwise_cfg.fused=True: {optimizer_cls.__name__} has no '
                              'fused update for these parameters (devices '
                              f'{sorted({p.device.type for p in trainable})})')
        optimizer_cfg[first_arg] = groups
        optimizer = OPTIMIZERS.build(optimizer_cfg)
        wrapper_cfg = self.optim_wrapper_cfg.copy()
        wrapper_cfg.setdefault('type', 'OptimWrapper')
        optim_wrapper = OPTIM_WRAPPERS.build(wrapper_cfg, default_args=dict(optimizer=optimizer))
        deferred = False
        if self.defer_grad_norm and getattr(optim_wrapper, 'clip_func', None) is \
                torch.nn.utils.clip_grad_norm_:
            optim_wrapper.clip_func = DeferredClipGradNorm()
            deferred = True
        merged = [[id(p) for p in g['params']] for g in optimizer.param_groups]
        if self.merge_groups and len(unmerged) != len(merged):
            _accept_unmerged_checkpoints(optim_wrapper, unmerged, merged)
        norm = ('kept on the device, logged per log line' if deferred else
                'read each step (mmengine)')
        print_log(f'optimizer: {optimizer_cls.__name__}, {how} update, '
                  f'{len(optimizer.param_groups)} param groups for {len(trainable)} trainable '
                  f'tensors ({len(unmerged)} before merging by settings); gradient norm '
                  f'{norm}',
                  logger='current', level=logging.INFO)
        return optim_wrapper


def _accept_unmerged_checkpoints(optim_wrapper, unmerged, merged) -> None:
    """Let ``optim_wrapper.load_state_dict`` take a state saved with the unmerged groups
    (a run from before the merge) by regrouping it first."""
    load = optim_wrapper.load_state_dict

    def load_state_dict(state_dict: dict) -> None:
        groups = state_dict.get('param_groups', [])
        if len(groups) == len(unmerged) and len(groups) != len(merged) and \
                [len(g['params']) for g in groups] == [len(g) for g in unmerged]:
            print_log(f'optimizer state saved with {len(groups)} param groups: regrouped '
                      f'into {len(merged)}', logger='current', level=logging.INFO)
            state_dict = regroup_state_dict(state_dict, unmerged, merged)
            # how the update runs is this run's choice, not the checkpoint's
            for saved, current in zip(state_dict['param_groups'],
                                      optim_wrapper.optimizer.param_groups):
                for key in ('fused', 'foreach'):
                    if key in current:
                        saved[key] = current[key]
        load(state_dict)

    optim_wrapper.load_state_dict = load_state_dict
