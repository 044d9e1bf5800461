"""Multi-scale deformable attention in Triton: forward and backward, no CUDA toolkit needed.

DINO needs one GPU kernel PyTorch lacks. mmcv's comes compiled with its CUDA ops (a
27-minute build that must match torch's CUDA, and no bfloat16 version); Triton ships with
torch's CUDA builds and compiles these kernels for the GPU at hand on first use. With
``TRITON_INTERPRET=1`` set before Triton is imported, the same kernels run on CPU tensors:
that is how the tests check them against the PyTorch reference on machines without a GPU.

Semantics are mmcv's pure-PyTorch reference (``multi_scale_deformable_attn_pytorch``):
bilinear sampling with zero padding, ``grid_sample(align_corners=False)``, i.e. pixel
coordinates ``x = loc_x * W_l - 0.5``, ``y = loc_y * H_l - 0.5``, computed with
grid_sample's float operations so that a sample on a pixel boundary (where the location
gradient jumps) falls on the same side as in the reference.

How the work is split (docs/benchmarks.md): one program per (block of ``BLOCK_Q`` queries,
image x head). A program walks the levels and points of its queries and, for each
sample, gathers the four neighbouring value rows of its head: ``BLOCK_Q x head_dim``
elements, each row ``head_dim`` contiguous numbers (64 bytes in bfloat16 at the recipe's
32), so loads are coalesced and no value tile has to fit in shared memory. Accumulation is
float32 whatever the input dtype; the output is written once. The backward pass uses the
same split: the gradients of the sampling locations and attention weights belong to one
program each (plain stores), the value gradient is scattered with float32 atomic adds,
as mmcv's CUDA kernel does. At the recipe's shapes (1,000 decoder queries, ~20,000 encoder
queries at 800x1333, 8 heads, 4 levels x 4 points) the grid has 16-2,500 x 16 programs.
"""
from __future__ import annotations

import os

import torch

from ..errors import ConfigError

try:  # Triton comes with torch's CUDA builds; a CPU-only torch may lack it
    import triton
    import triton.language as tl
    HAS_TRITON = True
except ImportError:  # pragma: no cover - depends on the install
    triton = tl = None
    HAS_TRITON = False


class TritonUnavailableError(ConfigError, RuntimeError):
    """``deform_attn_impl='triton'`` where the kernels cannot run."""


def interpreting() -> bool:
    """Whether Triton runs its kernels on the CPU (``TRITON_INTERPRET=1``)."""
    return os.environ.get('TRITON_INTERPRET', '0') == '1'


def triton_runs_on(device: torch.device) -> bool:
    """Whether the Triton kernels can run on tensors of ``device``."""
    return HAS_TRITON and (device.type == 'cuda' or (device.type == 'cpu' and interpreting()))


if HAS_TRITON:

    @triton.jit
    def _corner(value_ptr, b, h, xi, yi, w_l, h_l, start, S, H, D, qmask, d, dmask):
        """The value rows at integer pixel (xi, yi) of a level: (BLOCK_Q, BLOCK_D) float32,
        zero outside the level; with their element offsets and mask (for the gradient)."""
        valid = qmask & (xi >= 0) & (xi < w_l) & (yi >= 0) & (yi < h_l)
        index = start + yi * w_l + xi
        offsets = (((b * S + index) * H + h) * D)[:, None] + d[None, :]
        mask = valid[:, None] & dmask[None, :]
        return tl.load(value_ptr + offsets, mask=mask, other=0.0).to(tl.float32), offsets, mask

    @triton.jit
    def _sample_point(loc_ptr, attn_ptr, sample, qmask, w_l, h_l):
        """A sample's attention weight, its top-left pixel (x0, y0) on the level and the
        fractions (fx, fy) towards the next pixel, all float32 but the pixel."""
        lx = tl.load(loc_ptr + 2 * sample, mask=qmask, other=0.0).to(tl.float32)
        ly = tl.load(loc_ptr + 2 * sample + 1, mask=qmask, other=0.0).to(tl.float32)
        w = tl.load(attn_ptr + sample, mask=qmask, other=0.0).to(tl.float32)
        # grid_sample's own arithmetic (grid = 2 loc - 1, then align_corners=False
        # unnormalisation), so samples on pixel boundaries fall on the same side
        x = ((2.0 * lx - 1.0 + 1.0) * w_l - 1.0) / 2.0
        y = ((2.0 * ly - 1.0 + 1.0) * h_l - 1.0) / 2.0
        x0f = tl.floor(x)
        y0f = tl.floor(y)
        return w, x0f.to(tl.int32), y0f.to(tl.int32), x - x0f, y - y0f

    @triton.jit
    def _msda_forward_kernel(value_ptr, shapes_ptr, starts_ptr, loc_ptr, attn_ptr, out_ptr,
                             S, Q, H, L, P, D,
                             BLOCK_Q: tl.constexpr, BLOCK_D: tl.constexpr):
        pid_q = tl.program_id(0)
        bh = tl.program_id(1)
        b = bh // H
        h = bh % H
        q = pid_q * BLOCK_Q + tl.arange(0, BLOCK_Q)
        qmask = q < Q
        d = tl.arange(0, BLOCK_D)
        dmask = d < D
        acc = tl.zeros((BLOCK_Q, BLOCK_D), dtype=tl.float32)
        for lvl in range(L):
            h_l = tl.load(shapes_ptr + 2 * lvl)
            w_l = tl.load(shapes_ptr + 2 * lvl + 1)
            start = tl.load(starts_ptr + lvl)
            for p in range(P):
                sample = (((b * Q + q) * H + h) * L + lvl) * P + p  # (B, Q, H, L, P)
                w, x0, y0, fx, fy = _sample_point(loc_ptr, attn_ptr, sample, qmask, w_l, h_l)
                v00, _, _ = _corner(value_ptr, b, h, x0, y0, w_l, h_l, start, S, H, D,
                                    qmask, d, dmask)
                v01, _, _ = _corner(value_ptr, b, h, x0 + 1, y0, w_l, h_l, start, S, H, D,
                                    qmask, d, dmask)
                v10, _, _ = _corner(value_ptr, b, h, x0, y0 + 1, w_l, h_l, start, S, H, D,
                                    qmask, d, dmask)
                v11, _, _ = _corner(value_ptr, b, h, x0 + 1, y0 + 1, w_l, h_l, start, S, H,
                                    D, qmask, d, dmask)
                top = v00 * (1 - fx)[:, None] + v01 * fx[:, None]
                bottom = v10 * (1 - fx)[:, None] + v11 * fx[:, None]
                sampled = top * (1 - fy)[:, None] + bottom * fy[:, None]
                acc += w[:, None] * sampled
        out = out_ptr + (((b * Q + q) * H + h) * D)[:, None] + d[None, :]
        tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=qmask[:, None] & dmask[None, :])

    @triton.jit
    def _msda_backward_kernel(value_ptr, shapes_ptr, starts_ptr, loc_ptr, attn_ptr,
                              grad_out_ptr, grad_value_ptr, grad_loc_ptr, grad_attn_ptr,
                              S, Q, H, L, P, D,
                              BLOCK_Q: tl.constexpr, BLOCK_D: tl.constexpr):
        pid_q = tl.program_id(0)
        bh = tl.program_id(1)
        b = bh // H
        h = bh % H
        q = pid_q * BLOCK_Q + tl.arange(0, BLOCK_Q)
        qmask = q < Q
        d = tl.arange(0, BLOCK_D)
        dmask = d < D
        go_ptrs = grad_out_ptr + (((b * Q + q) * H + h) * D)[:, None] + d[None, :]
        go = tl.load(go_ptrs, mask=qmask[:, None] & dmask[None, :], other=0.0).to(tl.float32)
        for lvl in range(L):
            h_l = tl.load(shapes_ptr + 2 * lvl)
            w_l = tl.load(shapes_ptr + 2 * lvl + 1)
            start = tl.load(starts_ptr + lvl)
            for p in range(P):
                sample = (((b * Q + q) * H + h) * L + lvl) * P + p
                w, x0, y0, fx, fy = _sample_point(loc_ptr, attn_ptr, sample, qmask, w_l, h_l)
                v00, p00, m00 = _corner(value_ptr, b, h, x0, y0, w_l, h_l, start, S, H, D,
                                        qmask, d, dmask)
                v01, p01, m01 = _corner(value_ptr, b, h, x0 + 1, y0, w_l, h_l, start, S, H,
                                        D, qmask, d, dmask)
                v10, p10, m10 = _corner(value_ptr, b, h, x0, y0 + 1, w_l, h_l, start, S, H,
                                        D, qmask, d, dmask)
                v11, p11, m11 = _corner(value_ptr, b, h, x0 + 1, y0 + 1, w_l, h_l, start, S,
                                        H, D, qmask, d, dmask)
                c00 = (1 - fx) * (1 - fy)
                c01 = fx * (1 - fy)
                c10 = (1 - fx) * fy
                c11 = fx * fy
                sampled = (v00 * c00[:, None] + v01 * c01[:, None] + v10 * c10[:, None]
                           + v11 * c11[:, None])
                tl.store(grad_attn_ptr + sample, tl.sum(go * sampled, axis=1), mask=qmask)
                # d sampled / d x and d y (zero-padded corners included, as grid_sample)
                dx = (v01 - v00) * (1 - fy)[:, None] + (v11 - v10) * fy[:, None]
                dy = (v10 - v00) * (1 - fx)[:, None] + (v11 - v01) * fx[:, None]
                gx = w * tl.sum(go * dx, axis=1) * w_l
                gy = w * tl.sum(go * dy, axis=1) * h_l
                tl.store(grad_loc_ptr + 2 * sample, gx, mask=qmask)
                tl.store(grad_loc_ptr + 2 * sample + 1, gy, mask=qmask)
                wg = w[:, None] * go
                tl.atomic_add(grad_value_ptr + p00, wg * c00[:, None], mask=m00)
                tl.atomic_add(grad_value_ptr + p01, wg * c01[:, None], mask=m01)
                tl.atomic_add(grad_value_ptr + p10, wg * c10[:, None], mask=m10)
                tl.atomic_add(grad_value_ptr + p11, wg * c11[:, None], mask=m11)


def _block_q() -> int:
    # the interpreter runs programs one by one in Python: fewer, larger ones
    return 128 if interpreting() else 64


class TritonMSDAFunction(torch.autograd.Function):
    """Autograd function of the Triton kernels.

    Shapes: value (B, S, heads, head_dim); spatial_shapes (levels, 2) as (H, W);
    level_start_index (levels, ); sampling_locations (B, Q, heads, levels, points, 2)
    normalised (x, y); attention_weights (B, Q, heads, levels, points). Returns
    (B, Q, heads * head_dim) in ``value``'s dtype; float32, bfloat16 and float16 inputs
    (mixed too) are read as they are and accumulated in float32.
    """

    @staticmethod
    def forward(ctx, value, spatial_shapes, level_start_index, sampling_locations,
                attention_weights):
        B, S, H, D = value.shape
        _, Q, _, L, P, _ = sampling_locations.shape
        value = value.contiguous()
        loc = sampling_locations.contiguous()
        attn = attention_weights.contiguous()
        shapes = spatial_shapes.to(device=value.device, dtype=torch.int32).contiguous()
        starts = level_start_index.to(device=value.device, dtype=torch.int32).contiguous()
        out = torch.empty(B, Q, H, D, dtype=value.dtype, device=value.device)
        block_q = _block_q()
        grid = (triton.cdiv(Q, block_q), B * H)
        _msda_forward_kernel[grid](value, shapes, starts, loc, attn, out, S, Q, H, L, P, D,
                                   BLOCK_Q=block_q, BLOCK_D=triton.next_power_of_2(D))
        ctx.save_for_backward(value, shapes, starts, loc, attn)
        return out.view(B, Q, H * D)

    @staticmethod
    def backward(ctx, grad_output):
        value, shapes, starts, loc, attn = ctx.saved_tensors
        B, S, H, D = value.shape
        _, Q, _, L, P, _ = loc.shape
        grad_out = grad_output.contiguous().view(B, Q, H, D)
        grad_value = torch.zeros(value.shape, dtype=torch.float32, device=value.device)
        grad_loc = torch.empty(loc.shape, dtype=torch.float32, device=value.device)
        grad_attn = torch.empty(attn.shape, dtype=torch.float32, device=value.device)
        block_q = _block_q()
        grid = (triton.cdiv(Q, block_q), B * H)
        _msda_backward_kernel[grid](value, shapes, starts, loc, attn, grad_out,
                                    grad_value, grad_loc, grad_attn, S, Q, H, L, P, D,
                                    BLOCK_Q=block_q, BLOCK_D=triton.next_power_of_2(D))
        return (grad_value.to(value.dtype), None, None, grad_loc.to(loc.dtype),
                grad_attn.to(attn.dtype))


def msda_triton(value, spatial_shapes, level_start_index, sampling_locations,
                attention_weights):
    """Triton multi-scale deformable attention (see :class:`TritonMSDAFunction`)."""
    if not HAS_TRITON:
        raise TritonUnavailableError(
            "deformable attention: Triton is not installed (it comes with torch's CUDA "
            "builds); use deform_attn_impl='pytorch' or 'mmcv'")
    if not triton_runs_on(value.device):
        raise TritonUnavailableError(
            f'deformable attention: the Triton kernels run on CUDA tensors, got '
            f'{value.device} (set TRITON_INTERPRET=1 before Triton is imported to run them '
            'on the CPU, slowly)')
    return TritonMSDAFunction.apply(value, spatial_shapes, level_start_index,
                                    sampling_locations, attention_weights)
