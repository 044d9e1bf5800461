"""Deformable attention by type: the implementations, what 'auto' picks, the PyTorch path
against mmcv's module, bfloat16, and mmcv's CUDA kernel and the Triton kernels against it
where a GPU exists (the Triton kernels on the CPU: test_triton_deformable_attention.py)."""
import copy

import pytest
import torch
from mmcv.ops import MultiScaleDeformableAttention
from mmcv.ops import multi_scale_deform_attn as msda

from helpers import captured_log
from projects.dino_dinov2.errors import ConfigError
from projects.dino_dinov2.models import DeformableAttention, msda_pytorch, resolve_impl
from projects.dino_dinov2.models import deformable_attention as da

SHAPES = torch.tensor([[8, 8], [4, 4]])
HOST_SHAPES = [(8, 8), (4, 4)]
LEVEL_START = torch.tensor([0, 64])
CUDA, CPU = torch.device('cuda'), torch.device('cpu')
ARGS = dict(embed_dims=64, num_heads=4, num_levels=2, num_points=2, dropout=0.0)


def test_importing_the_package_patches_nothing_in_mmcv():
    assert msda.multi_scale_deformable_attn_pytorch.__module__ == msda.__name__
    assert msda.MultiScaleDeformableAttnFunction.__module__ == msda.__name__
    assert MultiScaleDeformableAttention.forward.__module__ == msda.__name__


def test_auto_resolves_by_device(monkeypatch):
    # an install with Triton (torch's CUDA builds): Triton on a GPU, PyTorch on the CPU
    monkeypatch.setattr(da, 'HAS_TRITON', True)
    assert resolve_impl('auto', CUDA) == 'triton' and resolve_impl('auto', CPU) == 'pytorch'
    # without Triton: mmcv's kernel if this mmcv has CUDA ops, else PyTorch
    monkeypatch.setattr(da, 'HAS_TRITON', False)
    monkeypatch.setattr(da, 'mmcv_has_cuda_ops', lambda: True)
    assert resolve_impl('auto', CUDA) == 'mmcv'
    monkeypatch.setattr(da, 'mmcv_has_cuda_ops', lambda: False)
    assert resolve_impl('auto', CUDA) == 'pytorch'
    # explicit choices
    assert resolve_impl('mmcv', CPU) == 'pytorch'  # mmcv's own choice off the GPU
    assert resolve_impl('triton', CPU) == 'triton' and resolve_impl('pytorch', CUDA) == 'pytorch'
    for bad in (lambda: resolve_impl('cuda', CPU), lambda: DeformableAttention(impl='fast')):
        with pytest.raises(ConfigError, match='deform_attn_impl'):
            bad()


def test_this_install_has_triton_and_a_cpu_only_mmcv():
    """The install this suite runs on: a CUDA torch with Triton, mmcv built CPU-only (no
    toolkit needed): a GPU would run the Triton path."""
    assert da.HAS_TRITON
    assert resolve_impl('auto', CUDA) == 'triton'


def _modules(batch_first, impl='pytorch'):
    """(mmcv's module, this project's) with the same weights."""
    torch.manual_seed(0)
    stock = MultiScaleDeformableAttention(batch_first=batch_first, **ARGS)
    # non-trivial offsets and weights (mmcv initialises them to a fixed pattern)
    for p in stock.parameters():
        p.data.add_(0.05 * torch.randn_like(p))
    ours = DeformableAttention(batch_first=batch_first, impl=impl, **ARGS)
    ours.load_state_dict(stock.state_dict())
    return stock, ours


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


def _run(module, inputs, autocast_device=None, **extra):
    inputs = {k: (v.detach().clone().requires_grad_() if v.requires_grad else v)
              for k, v in inputs.items()}
    module.zero_grad(set_to_none=True)
    with torch.autocast(autocast_device or 'cpu', dtype=torch.bfloat16,
                        enabled=autocast_device is not None):
        out = module(**inputs, **extra)
    (out.float() * torch.linspace(-1, 1, out.shape[-1], device=out.device)).sum().backward()
    grads = [inputs['query'].grad, inputs['value'].grad] + \
        [p.grad for p in module.parameters()]
    return out, grads


@pytest.mark.parametrize('batch_first', [True, False])
@pytest.mark.parametrize('ref_dim', [2, 4])
@pytest.mark.parametrize('host_shapes', [None, HOST_SHAPES], ids=['device-shapes', 'host'])
def test_pytorch_path_equals_mmcv_module_on_cpu(batch_first, ref_dim, host_shapes):
    """On the CPU mmcv itself runs its pure-PyTorch path: the results are identical, with
    the level sizes read from the device tensor or given as ints."""
    stock, ours = _modules(batch_first)
    assert ours.state_dict().keys() == stock.state_dict().keys()
    inputs = _inputs(batch_first, ref_dim)
    out_stock, g_stock = _run(stock, inputs)
    out_ours, g_ours = _run(ours, inputs, host_shapes=host_shapes)
    torch.testing.assert_close(out_ours, out_stock, rtol=0, atol=0)
    for a, b in zip(g_ours, g_stock):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize('batch_first', [True, False])
@pytest.mark.parametrize('ref_dim', [2, 4])
def test_onnx_layout_equals_mmcv_to_rounding(batch_first, ref_dim):
    """impl='onnx' (the layout the export traces): mmcv's products summed in another
    order, outputs and gradients equal to float32 rounding; it runs on the CPU as is."""
    stock, ours = _modules(batch_first, impl='onnx')
    assert resolve_impl('onnx', CPU) == 'onnx'
    inputs = _inputs(batch_first, ref_dim)
    out_stock, g_stock = _run(stock, inputs)
    out_ours, g_ours = _run(ours, inputs, host_shapes=HOST_SHAPES)
    torch.testing.assert_close(out_ours, out_stock, rtol=1e-5, atol=1e-6)
    for a, b in zip(g_ours, g_stock):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_pytorch_path_under_bf16_autocast_close_to_float32():
    """Under bfloat16 autocast the projections run in bfloat16 and the sampling in
    float32 (the inputs' dtypes differ): close to float32, gradients finite."""
    value = torch.randn(2, 80, 4, 16)
    loc, weights = torch.rand(2, 10, 4, 2, 2, 2), torch.rand(2, 10, 4, 2, 2).softmax(-1)
    out = msda_pytorch(value.bfloat16(), HOST_SHAPES, loc, weights)
    assert out.dtype == torch.bfloat16
    ref = msda.multi_scale_deformable_attn_pytorch(value, SHAPES, loc, weights)
    torch.testing.assert_close(out.float(), ref, atol=2e-2, rtol=2e-2)
    _, ours = _modules(True)
    inputs = _inputs(True, 4)
    out32, g32 = _run(ours, inputs)
    out16, g16 = _run(ours, inputs, autocast_device='cpu')
    assert not torch.equal(out16.float(), out32)
    assert (out16.float() - out32).norm() <= 1e-2 * out32.norm()
    names = ['query', 'value'] + [n for n, _ in ours.named_parameters()]
    for name, a, b in zip(names, g16, g32):
        assert torch.isfinite(a).all(), name
        # The offsets' gradients go through bf16 products of bilinear-interpolation
        # slopes (~20% off on random inputs, as in any bf16 autocast run); the rest
        # stays within 2%.
        if 'sampling_offsets' not in name and name != 'query':
            assert (a.float() - b).norm() <= 2e-2 * b.norm(), name


def test_choice_is_logged_once(monkeypatch):
    monkeypatch.setattr(da, '_REPORTED', set())
    _, ours = _modules(True, impl='auto')
    inputs = _inputs(True, 2)
    with captured_log() as log:
        ours(**inputs)
        ours(**inputs)
    assert [m for m in log if m.startswith('deformable attention')] == [
        "deformable attention: pytorch for deform_attn_impl='auto' on cpu"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason='needs a GPU: compiled kernels')
@pytest.mark.parametrize('amp', [False, True])
@pytest.mark.parametrize('impl', ['mmcv', 'triton'])
def test_compiled_kernels_match_reference_on_gpu(impl, amp):
    """mmcv's CUDA kernel (float32 inside bf16 autocast: it has no bfloat16 kernel) and the
    compiled Triton kernels (the CPU tests run them in the interpreter) against the
    PyTorch path."""
    _, ref = _modules(True)
    kernel = DeformableAttention(batch_first=True, impl=impl, **ARGS)
    kernel.load_state_dict(ref.state_dict())
    kernel, ref = kernel.cuda(), ref.cuda()
    inputs = _inputs(True, 4, device='cuda')
    out_k, g_k = _run(kernel, inputs, autocast_device='cuda' if amp else None)
    out_r, g_r = _run(ref, inputs, autocast_device='cuda' if amp else None)
    tol = 5e-2 if amp else 1e-4  # amp: both sides' projections in bfloat16
    torch.testing.assert_close(out_k.float(), out_r.float(), rtol=tol, atol=tol)
    for a, b in zip(g_k, g_r):
        assert (a.float() - b.float()).norm() <= tol * b.float().norm() + 1e-4
    assert copy.deepcopy(kernel).impl == impl
