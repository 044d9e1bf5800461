"""Mixed precision that picks its dtype and also runs on the CPU.

Upstream: mmengine 0.10.7's ``AmpOptimWrapper`` asserts a GPU, NPU or MLU at construction
("``AmpOptimizerWrapper`` is only available training on gpu, npu or mlu";
open-mmlab/mmpretrain#1556) although torch autocasts on the CPU in bfloat16. Delete the
CPU branch of :class:`CpuAmpOptimWrapper` when mmengine accepts the CPU; ``dtype='auto'``
is this project's.
"""
from __future__ import annotations

import logging
from typing import Optional

import torch
from mmengine.logging import print_log
from mmengine.optim import AmpOptimWrapper


def preferred_amp_dtype() -> str:
    """'bfloat16' where the hardware has it (Ampere+ GPUs, CPUs), else 'float16'."""
    if torch.cuda.is_available():
        return 'bfloat16' if torch.cuda.is_bf16_supported() else 'float16'
    return 'bfloat16'


class CpuAmpOptimWrapper(AmpOptimWrapper):
    """mmengine's ``AmpOptimWrapper`` with ``dtype='auto'`` and CPU support (the base of
    :class:`~..engine.optim_wrapper.AutoAmpOptimWrapper`, the registered one).

    mmengine's wrapper refuses to start without an accelerator; on the CPU autocast
    runs in bfloat16 (a float16 request says so and uses bfloat16: mmengine's CPU autocast
    refuses float16) and no loss scaling is needed, so the check is skipped there.
    bfloat16 has float32's range: the loss scaler is only used for float16.
    """

    def __init__(self, loss_scale='dynamic', dtype: Optional[str] = 'auto', **kwargs):
        if dtype == 'auto':
            dtype = preferred_amp_dtype()
        if torch.cuda.is_available():
            super().__init__(loss_scale=loss_scale, dtype=dtype, **kwargs)
        else:
            # mmengine asserts an accelerator; build the plain wrapper, then add
            # what AmpOptimWrapper's methods use.
            from mmengine.optim import OptimWrapper
            OptimWrapper.__init__(self, **kwargs)
            self._scale_update_param = None
            self.loss_scaler = torch.amp.GradScaler('cpu', enabled=False)
            self.cast_dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
            if self.cast_dtype == torch.float16:
                # mmengine's CPU autocast takes bfloat16 only (float16 is a GPU format)
                print_log('AMP: float16 autocast needs a GPU; using '
                          'bfloat16 on the CPU', logger='current', level=logging.WARNING)
                self.cast_dtype = torch.bfloat16
        if self.cast_dtype == torch.bfloat16 and torch.cuda.is_available():
            self.loss_scaler = torch.amp.GradScaler('cuda', enabled=False)
