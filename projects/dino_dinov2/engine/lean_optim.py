"""An optimizer with few parameter groups and one fused update.

mmengine's ``DefaultOptimWrapperConstructor`` makes one parameter group per parameter as
soon as ``paramwise_cfg`` is set (333 for the DINO recipe): AdamW then runs hundreds of
single-tensor updates, each several kernel launches, and reads every ``step`` back.

:class:`LeanOptimWrapperConstructor` builds the same optimizer (same per-parameter lr,
weight decay and the rest, so the same updates) with the groups whose settings are all
equal merged into one (a handful for the recipe: backbone/pyramid at lr x0.1 with and
without decay, the rest likewise), and torch's fused kernel (one launch per group) where
the optimizer has one and every parameter lives on a device it supports (CUDA, CPU),
unless the optimizer config sets ``fused`` or ``foreach`` itself (``fused=False``: torch's
default, foreach on a GPU). The wrapper it builds (``optim_wrapper.type``;
:class:`~.optim_wrapper.LeanOptimWrapper` in the configs) gets the unmerged layout, so an
optimizer state saved by mmengine's constructor still resumes.
"""
from __future__ import annotations

import inspect
import logging
from typing import Dict, List

import torch
from mmengine.logging import print_log
from mmengine.optim import DefaultOptimWrapperConstructor
from mmengine.registry import OPTIM_WRAPPER_CONSTRUCTORS, OPTIM_WRAPPERS, OPTIMIZERS

from .optim_wrapper import DeviceNormMixin


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


@OPTIM_WRAPPER_CONSTRUCTORS.register_module()
class LeanOptimWrapperConstructor(DefaultOptimWrapperConstructor):
    """``DefaultOptimWrapperConstructor`` (same ``paramwise_cfg``) with merged groups and a
    fused update (module doc)."""

    def __call__(self, model):
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
        unmerged = [list(g['params']) for g in groups]
        groups = merge_param_groups(groups)
        trainable = [p for g in groups for p in g['params'] if p.requires_grad]
        how = 'default'
        if 'fused' in optimizer_cfg or 'foreach' in optimizer_cfg:
            how = ('fused' if optimizer_cfg.get('fused') else
                   'foreach' if optimizer_cfg.get('foreach') else 'torch\'s default')
        elif _fused_supported(optimizer_cls, trainable):
            optimizer_cfg['fused'] = True
            how = 'fused'
        optimizer_cfg[first_arg] = groups
        optimizer = OPTIMIZERS.build(optimizer_cfg)
        wrapper_cfg = self.optim_wrapper_cfg.copy()
        wrapper_cfg.setdefault('type', 'OptimWrapper')
        default_args = dict(optimizer=optimizer)
        wrapper_cls = wrapper_cfg['type']
        if isinstance(wrapper_cls, str):
            wrapper_cls = OPTIM_WRAPPERS.get(wrapper_cls)
        keeps_norm = isinstance(wrapper_cls, type) and issubclass(wrapper_cls, DeviceNormMixin)
        if keeps_norm:
            default_args['unmerged_groups'] = unmerged
        optim_wrapper = OPTIM_WRAPPERS.build(wrapper_cfg, default_args=default_args)
        norm = ('kept on the device, logged per log line' if keeps_norm else
                'read each step (mmengine)')
        print_log(f'optimizer: {optimizer_cls.__name__}, {how} update, '
                  f'{len(optimizer.param_groups)} param groups for {len(trainable)} trainable '
                  f'tensors ({len(unmerged)} before merging by settings); gradient norm '
                  f'{norm}', logger='current', level=logging.INFO)
        return optim_wrapper
