"""Deformable-attention implementations side by side (``tools/benchmark.py --deform-attn``).

Forward and forward+backward time and peak memory of each implementation (``pytorch``,
``mmcv``'s CUDA kernel where this mmcv has CUDA ops, ``triton``) on the same inputs, at
the recipe's shapes by default: batch 2, an 800x1333 image's 4 levels (strides 8-64: 100x167,
50x84, 25x42, 13x21; 22,223 values), 8 heads x 32, 4 points, for the encoder's
self-attention (a query per value) and the decoder's cross-attention (900 + 100 queries).
Also checks the implementations agree (largest relative difference to ``pytorch``).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch

from projects.dino_dinov2.models.deformable_attention import (mmcv_has_cuda_ops, msda_mmcv,
                                                              msda_pytorch)
from projects.dino_dinov2.models.triton_deformable_attention import msda_triton, triton_runs_on

RECIPE_LEVELS = ((100, 167), (50, 84), (25, 42), (13, 21))


@dataclass
class KernelResult:
    impl: str
    layer: str
    dtype: str
    queries: int
    forward_ms: float
    forward_backward_ms: float
    peak_mib: Optional[float]
    max_rel_diff: Optional[float]  # against the pytorch output


def kernel_inputs(levels: Sequence[Tuple[int, int]], queries: Optional[int], batch: int = 2,
                  heads: int = 8, dim: int = 32, points: int = 4, dtype=torch.float32,
                  device='cpu', seed: int = 0):
    """value (B, S, heads, dim) in ``dtype``; locations and weights in float32 (as under
    autocast); ``queries`` None: one per value (the encoder)."""
    g = torch.Generator().manual_seed(seed)
    shapes = torch.tensor(levels, dtype=torch.long)
    sizes = shapes[:, 0] * shapes[:, 1]
    starts = torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]])
    S = int(sizes.sum())
    Q = S if queries is None else queries
    L = len(levels)
    value = torch.randn(batch, S, heads, dim, generator=g).to(dtype)
    loc = torch.rand(batch, Q, heads, L, points, 2, generator=g)
    attn = torch.rand(batch, Q, heads, L, points, generator=g)
    attn = attn / attn.sum((-1, -2), keepdim=True)
    return [t.to(device) for t in (value, shapes, starts, loc, attn)]


def available_impls(device: torch.device) -> List[str]:
    impls = ['pytorch']
    if device.type == 'cuda' and mmcv_has_cuda_ops():
        impls.append('mmcv')
    if triton_runs_on(device):
        impls.append('triton')
    return impls


def _call(impl, value, shapes, starts, loc, attn):
    if impl == 'triton':
        return msda_triton(value, shapes, starts, loc, attn)
    if impl == 'mmcv':
        return msda_mmcv(value, shapes, starts, loc, attn)
    return msda_pytorch(value, shapes, loc, attn)


def _timed(fn, device, iters: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(iters):
        if device.type == 'cuda':
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        fn()
        if device.type == 'cuda':
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t0)
    return float(np.median(times)) * 1000


def run_kernels(device: str = 'cuda', impls: Optional[Sequence[str]] = None,
                dtypes: Sequence[str] = ('float32', 'bfloat16'),
                levels: Sequence[Tuple[int, int]] = RECIPE_LEVELS, batch: int = 2,
                decoder_queries: int = 1000, iters: int = 20, warmup: int = 5,
                log=print) -> List[KernelResult]:
    dev = torch.device(device)
    impls = list(impls or available_impls(dev))
    results = []
    for layer, queries in (('encoder', None), ('decoder', decoder_queries)):
        for dtype_name in dtypes:
            dtype = getattr(torch, dtype_name)
            value, shapes, starts, loc, attn = kernel_inputs(levels, queries, batch,
                                                             dtype=dtype, device=dev)
            reference = None
            for impl in impls:
                tensors = [t.detach().clone().requires_grad_() for t in (value, loc, attn)]
                grad = None

                def forward():
                    with torch.no_grad():
                        return _call(impl, tensors[0], shapes, starts, tensors[1], tensors[2])

                def forward_backward():
                    nonlocal grad
                    out = _call(impl, tensors[0], shapes, starts, tensors[1], tensors[2])
                    if grad is None:
                        grad = torch.ones_like(out)
                    out.backward(grad)

                if dev.type == 'cuda':
                    torch.cuda.reset_peak_memory_stats(dev)
                fwd = _timed(forward, dev, iters, warmup)
                fwd_bwd = _timed(forward_backward, dev, iters, warmup)
                peak = torch.cuda.max_memory_allocated(dev) / 2**20 if dev.type == 'cuda' \
                    else None
                out = forward().float()
                if reference is None and impl == 'pytorch':
                    reference = out
                diff = None if reference is None else float(
                    ((out - reference).norm() / reference.norm().clamp_min(1e-12)).item())
                r = KernelResult(impl, layer, dtype_name, int(loc.shape[1]), fwd, fwd_bwd,
                                 peak, diff)
                results.append(r)
                if log:
                    log(f'{layer} {dtype_name} {impl}: forward {fwd:.3f} ms, forward+backward '
                        f'{fwd_bwd:.3f} ms' + (f', {peak:.0f} MiB' if peak else ''))
    return results


def kernel_table(results: Sequence[KernelResult]) -> str:
    lines = ['| Layer (queries) | Dtype | Implementation | Forward ms | Forward+backward ms | '
             'Peak MiB | Rel. diff to pytorch |',
             '| --- | --- | --- | --- | --- | --- | --- |']
    for r in results:
        lines.append(f'| {r.layer} ({r.queries}) | {r.dtype} | {r.impl} | {r.forward_ms:.3f} | '
                     f'{r.forward_backward_ms:.3f} | '
                     f'{"-" if r.peak_mib is None else f"{r.peak_mib:.0f}"} | '
                     f'{"-" if r.max_rel_diff is None else f"{r.max_rel_diff:.1e}"} |')
    return '\n'.join(lines)
