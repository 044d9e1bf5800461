"""Optimizer wrappers whose gradient norm stays on the device.

mmengine's ``OptimWrapper._clip_grad`` logs ``float(grad_norm)``: the host waits for the
backward pass to finish before it can queue the optimizer step. The wrappers here clip
exactly as mmengine's (``clip_grad_norm_``, same arguments) and keep the norm as a device
tensor, which :class:`~.hooks.DeferredRuntimeInfoHook` takes with :meth:`pop_grad_norm`
and copies to the host with the losses once per log line.

They also load an optimizer state saved with mmengine's one-group-per-parameter layout (a
run from before :class:`~.lean_optim.LeanOptimWrapperConstructor` merged the groups): the
constructor passes the unmerged layout (``unmerged_groups``), and :meth:`load_state_dict`
regroups such a state first.
"""
from __future__ import annotations

import logging
from typing import List, Optional

import torch
from mmengine.logging import print_log
from mmengine.optim import OptimWrapper
from mmengine.registry import OPTIM_WRAPPERS

from ..upstream.amp import CpuAmpOptimWrapper


def regroup_state_dict(state_dict: dict, old_groups: List[List[torch.Tensor]],
                       new_groups: List[List[torch.Tensor]]) -> dict:
    """An optimizer state dict saved with ``old_groups`` (the parameters of each group, the
    unmerged layout) rewritten for ``new_groups`` (the same parameters, merged)."""
    old_index, group_of = {}, {}
    for gi, group in enumerate(old_groups):
        for p in group:
            old_index[p] = len(old_index)
            group_of[p] = gi
    state, groups, new_i = {}, [], 0
    saved_groups = state_dict['param_groups']
    for members in new_groups:
        template = dict(saved_groups[group_of[members[0]]])
        template['params'] = []
        for p in members:
            old = old_index[p]
            if old in state_dict['state']:
                state[new_i] = state_dict['state'][old]
            template['params'].append(new_i)
            new_i += 1
        groups.append(template)
    return dict(state_dict, state=state, param_groups=groups)


class DeviceNormMixin:
    """The norm kept on the device; older unmerged optimizer states regrouped.

    Args:
        unmerged_groups: the parameter groups before merging, as lists of positions in
            the model's parameters (from :class:`~.lean_optim.LeanOptimWrapperConstructor`).
        *args, **kwargs: the wrapper's own arguments.
    """

    def __init__(self, *args, unmerged_groups: Optional[List[List[torch.Tensor]]] = None,
                 **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.unmerged_groups = unmerged_groups
        self._grad_norm: Optional[torch.Tensor] = None

    def _clip_grad(self) -> None:
        # mmengine 0.10.7 OptimWrapper._clip_grad without float(grad) and message-hub write
        params = [p for group in self.optimizer.param_groups for p in group['params']
                  if p.requires_grad and p.grad is not None]
        if not params:
            return
        if self.clip_func is torch.nn.utils.clip_grad_norm_:
            kwargs = dict(self.clip_grad_kwargs)
            kwargs.setdefault('foreach', None)
            self._grad_norm = self.clip_func(params, **kwargs).detach()
        else:  # clip by value: no norm
            self.clip_func(params, **self.clip_grad_kwargs)

    def pop_grad_norm(self) -> Optional[torch.Tensor]:
        """The last step's gradient norm (a 0-d device tensor), once; None if no step
        clipped by norm since the last call."""
        norm, self._grad_norm = self._grad_norm, None
        return norm

    def load_state_dict(self, state_dict: dict) -> None:
        saved = state_dict.get('param_groups', [])
        merged = [g['params'] for g in self.optimizer.param_groups]
        unmerged = self.unmerged_groups
        if unmerged and len(saved) == len(unmerged) != len(merged) and \
                [len(g['params']) for g in saved] == [len(g) for g in unmerged]:
            print_log(f'optimizer state saved with {len(saved)} param groups: regrouped '
                      f'into {len(merged)}', logger='current', level=logging.INFO)
            state_dict = regroup_state_dict(state_dict, unmerged, merged)
            # how the update runs is this run's choice, not the checkpoint's
            for group, current in zip(state_dict['param_groups'], self.optimizer.param_groups):
                for key in ('fused', 'foreach'):
                    if key in current:
                        group[key] = current[key]
        super().load_state_dict(state_dict)


@OPTIM_WRAPPERS.register_module()
class LeanOptimWrapper(DeviceNormMixin, OptimWrapper):
    """mmengine's ``OptimWrapper`` with the gradient norm on the device (module doc)."""


@OPTIM_WRAPPERS.register_module()
class AutoAmpOptimWrapper(DeviceNormMixin, CpuAmpOptimWrapper):
    """Mixed precision (``dtype='auto'``: bfloat16 where the hardware has it, else float16;
    on the CPU too) with the gradient norm on the device (module doc)."""
