"""The deformable-attention switch: the original's pure-PyTorch path (forced on any
device) against mmcv's module, and mmcv's CUDA kernel and the Triton kernels against it
where a GPU exists."""
import copy

import pytest
import torch
from mmcv.ops import MultiScaleDeformableAttention

from projects.dino_dinov2.models import (SwitchableMultiScaleDeformableAttention,
                                         use_deformable_attention)

SHAPES = torch.tensor([[8, 8], [4, 4]])
LEVEL_START = torch.tensor([0, 64])


def _modules(batch_first):
    torch.manual_seed(0)
    stock = MultiScaleDeformableAttention(embed_dims=64, num_heads=4, num_levels=2,
                                          num_points=2, batch_first=batch_first,
                                          dropout=0.0)
    # non-trivial offsets and weights (mmcv initialises them to a fixed pattern)
    for p in stock.parameters():
        p.data.add_(0.05 * torch.randn_like(p))
    ref = copy.deepcopy(stock)
    assert use_deformable_attention(ref, 'pytorch') == 1
    assert type(ref) is SwitchableMultiScaleDeformableAttention and ref.impl == 'pytorch'
    assert ref.state_dict().keys() == stock.state_dict().keys()
    return stock, ref


def _inputs(batch_first, ref_dim, device='cpu'):
    torch.manual_seed(1)
    q, v = torch.randn(2, 10, 64), torch.randn(2, 80, 64)
    if not batch_first:
        q, v = q.transpose(0, 1), v.transpose(0, 1)
    ref_points = torch.rand(2, 10, 2, ref_dim) * 0.8 + 0.1
    mask = torch.zeros(2, 80, dtype=torch.bool)
    mask[1, -10:] = True
    return dict(query=q.to(device).requires_grad_(), value=v.to(device).requires_grad_(),
                query_pos=torch.randn_like(q).to(device), key_padding_mask=mask.to(device),
                reference_points=ref_points.to(device), spatial_shapes=SHAPES.to(device),
                level_start_index=LEVEL_START.to(device))


def _run(module, inputs, autocast_device=None):
    inputs = {k: (v.detach().clone().requires_grad_() if v.requires_grad else v)
              for k, v in inputs.items()}
    module.zero_grad(set_to_none=True)
    with torch.autocast(autocast_device or 'cpu', dtype=torch.bfloat16,
                        enabled=autocast_device is not None):
        out = module(**inputs)
    (out.float() * torch.linspace(-1, 1, out.shape[-1], device=out.device)).sum().backward()
    grads = [inputs['query'].grad, inputs['value'].grad] + \
        [p.grad for p in module.parameters()]
    return out, grads


@pytest.mark.parametrize('batch_first', [True, False])
@pytest.mark.parametrize('ref_dim', [2, 4])
def test_reference_equals_mmcv_module_on_cpu(batch_first, ref_dim):
    # on the CPU mmcv itself runs the pure-PyTorch path: results must be identical
    stock, ref = _modules(batch_first)
    inputs = _inputs(batch_first, ref_dim)
    out_stock, g_stock = _run(stock, inputs)
    out_ref, g_ref = _run(ref, inputs)
    torch.testing.assert_close(out_ref, out_stock, rtol=0, atol=0)
    for a, b in zip(g_ref, g_stock):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_reference_under_bf16_autocast_close_to_float32():
    _, ref = _modules(True)
    inputs = _inputs(True, 4)
    out32, g32 = _run(ref, inputs)
    out16, g16 = _run(ref, inputs, autocast_device='cpu')
    # bf16 projections, float32 sampling inside, float32 residual: close, not equal
    assert not torch.equal(out16.float(), out32)
    assert (out16.float() - out32).norm() <= 1e-2 * out32.norm()
    names = ['query', 'value'] + [n for n, _ in ref.named_parameters()]
    for name, a, b in zip(names, g16, g32):
        assert torch.isfinite(a).all(), name
        # The offsets' gradients go through bf16 products of bilinear-interpolation
        # slopes (~20% off on random inputs, as in any bf16 autocast run); the rest
        # stays within 2%.
        if 'sampling_offsets' not in name and name != 'query':
            assert (a.float() - b).norm() <= 2e-2 * b.norm(), name


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a GPU: compiled kernels')
@pytest.mark.parametrize('amp', [False, True])
@pytest.mark.parametrize('impl', ['mmcv', 'triton'])
def test_compiled_kernels_match_reference_on_gpu(impl, amp):
    """mmcv's CUDA kernel through the switch (float32 inside bf16 autocast: mmcv's own
    module has no bfloat16 kernel) and the compiled Triton kernels (the CPU tests run them
    in the interpreter) against the reference path."""
    _, ref = _modules(True)
    kernel = copy.deepcopy(ref)
    use_deformable_attention(kernel, impl)
    kernel, ref = kernel.cuda(), ref.cuda()
    inputs = _inputs(True, 4, device='cuda')
    out_k, g_k = _run(kernel, inputs, autocast_device='cuda' if amp else None)
    out_r, g_r = _run(ref, inputs, autocast_device='cuda' if amp else None)
    tol = 5e-2 if amp else 1e-4  # amp: both sides' projections in bfloat16
    torch.testing.assert_close(out_k.float(), out_r.float(), rtol=tol, atol=tol)
    for a, b in zip(g_k, g_r):
        assert (a.float() - b.float()).norm() <= tol * b.float().norm() + 1e-4
