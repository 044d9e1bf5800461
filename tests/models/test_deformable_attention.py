"""The deformable-attention switch: implementations, what 'auto' picks, and precision."""
import pytest
import torch
from mmcv.ops import MultiScaleDeformableAttention
from mmcv.ops import multi_scale_deform_attn as msda

from helpers import captured_log
from projects.dino_dinov2.models import deformable_attention as da
from projects.dino_dinov2.models import (SwitchableMultiScaleDeformableAttention, msda_pytorch,
                                         resolve_impl, use_deformable_attention)

SHAPES = torch.tensor([[8, 8], [4, 4]])
CUDA, CPU = torch.device('cuda'), torch.device('cpu')


def _inputs(dtype_value=torch.float32):
    torch.manual_seed(0)
    value = torch.randn(2, 80, 8, 32)
    loc = torch.rand(2, 10, 8, 2, 4, 2)
    weights = torch.rand(2, 10, 8, 2, 4).softmax(-1)
    return value.to(dtype_value), loc, weights


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
    with pytest.raises(ValueError, match="deform_attn_impl must be one of"):
        resolve_impl('cuda', CPU)


def test_this_install_has_triton_and_a_cpu_only_mmcv():
    """The install this suite runs on: a CUDA torch with Triton, mmcv built CPU-only (no
    toolkit needed): a GPU would run the Triton path."""
    assert da.HAS_TRITON
    assert resolve_impl('auto', CUDA) == 'triton'


def test_choice_is_logged_once(monkeypatch):
    monkeypatch.setattr(da, '_REPORTED', set())
    attn = MultiScaleDeformableAttention(embed_dims=64, num_heads=4, num_levels=2,
                                         num_points=2, batch_first=True)
    assert use_deformable_attention(attn, 'auto') == 1
    query, value = torch.randn(1, 5, 64), torch.randn(1, 80, 64)
    kwargs = dict(value=value, reference_points=torch.rand(1, 5, 2, 2),
                  spatial_shapes=SHAPES, level_start_index=torch.tensor([0, 64]))
    with captured_log() as log:
        attn(query, **kwargs)
        attn(query, **kwargs)
    assert [m for m in log if m.startswith('deformable attention')] == [
        "deformable attention: pytorch for deform_attn_impl='auto' on cpu"]


def test_bf16_value_matches_float32_reference():
    value, loc, weights = _inputs()
    ref = msda.multi_scale_deformable_attn_pytorch(value, SHAPES, loc, weights)
    out = msda_pytorch(value.bfloat16(), SHAPES, loc, weights)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, atol=2e-2, rtol=2e-2)


def test_float32_path_unchanged():
    value, loc, weights = _inputs()
    torch.testing.assert_close(msda_pytorch(value, SHAPES, loc, weights),
                               msda.multi_scale_deformable_attn_pytorch(value, SHAPES, loc,
                                                                        weights),
                               rtol=0, atol=0)


def test_module_under_cpu_bf16_autocast_has_gradients():
    attn = MultiScaleDeformableAttention(embed_dims=64, num_heads=4, num_levels=2,
                                         num_points=2, batch_first=True)
    use_deformable_attention(attn, 'pytorch')
    assert type(attn) is SwitchableMultiScaleDeformableAttention and attn.impl == 'pytorch'
    query = torch.randn(2, 10, 64, requires_grad=True)
    value = torch.randn(2, 80, 64)
    ref_points = torch.rand(2, 10, 2, 2)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = attn(query, value=value, reference_points=ref_points, spatial_shapes=SHAPES,
                   level_start_index=torch.tensor([0, 64]))
    assert out.shape == (2, 10, 64) and torch.isfinite(out).all()
    out.float().sum().backward()
    assert torch.isfinite(query.grad).all() and attn.value_proj.weight.grad is not None


def test_unknown_impl_and_models_without_deformable_attention():
    assert use_deformable_attention(torch.nn.Linear(2, 2), 'pytorch') == 0
    with pytest.raises(ValueError, match='deform_attn_impl'):
        use_deformable_attention(torch.nn.Linear(2, 2), 'fast')
