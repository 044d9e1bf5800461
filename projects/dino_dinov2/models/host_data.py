"""Host data on its way to the device: one pinned, non-blocking copy.

A tensor made from host data (``torch.tensor``, ``new_tensor``) and moved to a GPU is a
copy from pageable memory: the host waits for it. Built on the host, pinned and copied
with ``non_blocking=True``, it is queued like a kernel instead. The training step gathers
the host-known numbers it needs (image sizes, feature sizes, matched indices) into a few
such tensors. (On the CPU the copy is a no-op; ``tools/analysis_tools/host_profile.py``
counts the calls of :func:`host_to_device` as the pinned copies they are on a GPU.)
"""
from __future__ import annotations

import numpy as np
import torch


def host_to_device(values, device: torch.device) -> torch.Tensor:
    """``values`` (a numpy array or a host tensor) on ``device``: pinned and non-blocking
    on a GPU."""
    tensor = torch.from_numpy(values) if isinstance(values, np.ndarray) else values
    if device.type == 'cuda':
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def to_host(tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` on the host: the host waits for the device to get there (a
    synchronisation on a GPU; counted by the profile, which the CPU cannot show)."""
    return tensor.cpu()
