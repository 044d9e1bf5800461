"""EMA of the trained weights: mmdet's ``ExpMomentumEMA`` formula, without its per-tensor
host reads and without a second copy of a frozen backbone.

The average follows ``ExpMomentumEMA`` exactly (``avg = avg + m * (src - avg)``, with
``m = (1 - momentum) * exp(-(1 + step) / gamma) + momentum`` and a plain copy at step 0).
With ``momentum=0.007, gamma=100`` that is RF-DETR's ``ModelEma(decay=0.993, tau=100)``:
``decay(t) = 0.993 * (1 - exp(-t / 100))``, so the average follows the weights closely in
the first few hundred iterations and then averages over ~140 of them -- sized for the few
thousand iterations of a fine-tune, where YOLOX's ``momentum=0.0002, gamma=2000`` (mmdet's
default) would still be warming up at the end.

Where it differs from ``mmengine.model.BaseAveragedModel``, for speed and memory only:

* the step count is a Python int (mirrored into the ``steps`` buffer for checkpoints), so an
  update reads nothing back from the device (mmengine's compares and converts the ``steps``
  tensor per update and per tensor: one host sync each on a GPU);
* the trainable tensors are averaged in one ``torch._foreach_lerp_`` (a few kernels, not
  two per tensor);
* tensors that do not train (a frozen backbone) are not copied: the average holds the
  model's own tensors there (``deepcopy`` memo), which never change, so a frozen ViT-L costs
  no memory and no time (nor checkpoint space: the hook leaves them out of
  ``ema_state_dict``, they are in ``state_dict`` once);
* buffers are copied from the model, not averaged (``update_buffers`` is accepted and only
  says so: DINO has no batch-norm statistics to average).
"""
from __future__ import annotations

import copy
import math
from typing import Dict, List, Optional

import torch
from mmdet.registry import MODELS
from mmengine.model import BaseAveragedModel
from torch import nn


@MODELS.register_module()
class LeanExpMomentumEMA(BaseAveragedModel):
    """``ExpMomentumEMA`` (same arguments, same values) over the trainable tensors only.

    Args:
        model: the model to average.
        momentum: the final weight of the model in each update (``1 - decay``).
        gamma: warm-up length in updates (``tau`` of RF-DETR's ModelEma).
        interval: update every ``interval`` calls.
        device: where the average lives (default: with the model).
        update_buffers: accepted for config compatibility; buffers are copied.
    """

    def __init__(self, model: nn.Module, momentum: float = 0.0002, gamma: float = 2000,
                 interval: int = 1, device: Optional[torch.device] = None,
                 update_buffers: bool = False) -> None:
        nn.Module.__init__(self)
        if not 0.0 < momentum < 1.0:
            raise ValueError(f'momentum must be in (0, 1), got {momentum}')
        if gamma <= 0:
            raise ValueError(f'gamma must be positive, got {gamma}')
        frozen = {id(p): p for p in model.parameters() if not p.requires_grad}
        memo = dict(frozen)  # deepcopy hands these back as they are: shared, not copied
        self.module = copy.deepcopy(model, memo)
        if device is not None:
            self.module = self.module.to(device)
        for p in self.module.parameters():
            if id(p) not in frozen:
                p.requires_grad_(False)
        self.register_buffer('steps', torch.tensor(0, dtype=torch.long, device=device))
        self.momentum = momentum
        self.gamma = gamma
        self.interval = interval
        self.update_buffers = update_buffers
        self._step = 0
        # name -> tensor of the average that is updated: trainable floating tensors
        self.avg_parameters: Dict[str, torch.Tensor] = {
            name: p for name, p in self.module.named_parameters()
            if id(p) not in frozen and p.dtype.is_floating_point}
        # frozen tensors: the model's own; left out of the EMA's checkpoint entry
        self.shared_names = [name for name, p in self.module.named_parameters()
                             if id(p) in frozen]
        self._pairs = None  # (model, its tensors in avg_parameters' order, buffer pairs)

    def avg_func(self, averaged_param, source_param, steps) -> None:  # mmengine's interface
        averaged_param.lerp_(source_param, self.momentum_at(int(steps)))

    def momentum_at(self, step: int) -> float:
        """The model's weight in the update after ``step`` earlier updates."""
        return (1 - self.momentum) * math.exp(-float(1 + step) / self.gamma) + self.momentum

    def _tensors_of(self, model: nn.Module):
        """The averaged tensors, the model's matching ones and the buffer pairs, looked up
        once per model (its parameters are updated in place, never replaced)."""
        if self._pairs is None or self._pairs[0] is not model:
            source = dict(model.named_parameters())
            avg: List[torch.Tensor] = list(self.avg_parameters.values())
            src = [source[name].detach() for name in self.avg_parameters]
            buffers = list(zip(self.module.buffers(), model.buffers()))
            self._pairs = (model, avg, src, buffers)
        return self._pairs[1:]

    @torch.no_grad()
    def update_parameters(self, model: nn.Module) -> None:
        avg, src, buffers = self._tensors_of(model)
        if avg and src[0].device != avg[0].device:  # an average kept on another device
            src = [s.to(a.device) for s, a in zip(src, avg)]
        if self._step == 0:
            torch._foreach_copy_(avg, src)
        elif self._step % self.interval == 0:
            torch._foreach_lerp_(avg, src, self.momentum_at(self._step))
        for b_avg, b_src in buffers:
            b_avg.copy_(b_src.to(b_avg.device))
        self._step += 1
        self.steps.fill_(self._step)  # a kernel, not a host read

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        key = prefix + 'steps'
        if key in state_dict:
            self._step = int(state_dict[key])  # once, when a checkpoint is loaded

    def describe(self) -> str:
        """One line for the log: what is averaged and how."""
        tensors = len(self.avg_parameters)
        numel = sum(p.numel() for p in self.avg_parameters.values())
        shared = (f'; {len(self.shared_names)} frozen tensors shared with the model, not '
                  'copied') if self.shared_names else ''
        return (f'EMA of the weights: momentum {self.momentum:g} (decay {1 - self.momentum:g}) '
                f'with warm-up gamma {self.gamma:g} updates, every {self.interval} '
                f'iteration(s); {tensors} trainable tensors ({numel / 1e6:.1f} M values) '
                f'averaged{shared}')
