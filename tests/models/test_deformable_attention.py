"""Deformable attention under reduced precision (float32 inside, cast back)."""
import torch
from mmcv.ops import MultiScaleDeformableAttention
from mmcv.ops import multi_scale_deform_attn as msda

import projects.dino_dinov2  # noqa: F401  (installs the dtype-safe functions)
from projects.dino_dinov2.models.deformable_attention import (_ORIG_PYTORCH,
                                                              float32_safe_msda_pytorch)

SHAPES = torch.tensor([[8, 8], [4, 4]])


def _inputs(dtype_value=torch.float32):
    torch.manual_seed(0)
    value = torch.randn(2, 80, 8, 32)
    loc = torch.rand(2, 10, 8, 2, 4, 2)
    weights = torch.rand(2, 10, 8, 2, 4).softmax(-1)
    return value.to(dtype_value), loc, weights


def test_installed_in_mmcv():
    assert msda.multi_scale_deformable_attn_pytorch is float32_safe_msda_pytorch
    assert msda.MultiScaleDeformableAttnFunction.__name__ == 'Float32SafeMSDAFunction'


def test_bf16_value_matches_float32_reference():
    value, loc, weights = _inputs()
    ref = _ORIG_PYTORCH(value, SHAPES, loc, weights)
    out = float32_safe_msda_pytorch(value.bfloat16(), SHAPES, loc, weights)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, atol=2e-2, rtol=2e-2)


def test_float32_path_unchanged():
    value, loc, weights = _inputs()
    torch.testing.assert_close(float32_safe_msda_pytorch(value, SHAPES, loc, weights),
                               _ORIG_PYTORCH(value, SHAPES, loc, weights), rtol=0, atol=0)


def test_module_under_cpu_bf16_autocast_has_gradients():
    attn = MultiScaleDeformableAttention(embed_dims=64, num_heads=4, num_levels=2,
                                         num_points=2, batch_first=True)
    query = torch.randn(2, 10, 64, requires_grad=True)
    value = torch.randn(2, 80, 64)
    ref_points = torch.rand(2, 10, 2, 2)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = attn(query, value=value, reference_points=ref_points, spatial_shapes=SHAPES,
                   level_start_index=torch.tensor([0, 64]))
    assert out.shape == (2, 10, 64) and torch.isfinite(out).all()
    out.float().sum().backward()
    assert torch.isfinite(query.grad).all() and attn.value_proj.weight.grad is not None
