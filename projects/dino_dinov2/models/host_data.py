"""Host data on its way to the device: one pinned, non-blocking copy.

A tensor made from host data (``torch.tensor``, ``new_tensor``) and moved to a GPU is a
copy from pageable memory: the host waits for it. Built on the host, pinned and copied
with ``non_blocking=True``, it is queued like a kernel instead. The training step gathers
the host-known numbers it needs (image sizes, feature sizes, matched indices) into a few
such tensors. (On the CPU the copy is a no-op; ``analysis/host_profile.py`` counts the
calls of :func:`host_to_device` as the pinned copies they are on a GPU.)
"""
from __future__ import annotations

import torch


def host_to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``tensor`` (on the host) on ``device``: pinned and non-blocking on a GPU."""
    if device.type == 'cuda':
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def host_tensor(values, dtype=torch.int64) -> torch.Tensor:
    """A host tensor of ``values`` (a list of numbers)."""
    return torch.tensor(values, dtype=dtype)
