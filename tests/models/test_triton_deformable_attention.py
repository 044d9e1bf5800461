"""The Triton deformable-attention kernels against mmcv's PyTorch reference, on the CPU
under Triton's interpreter (TRITON_INTERPRET=1, set in conftest.py), or compiled on a GPU.

Tolerances: float32 inputs, 1e-5 (both sides accumulate in float32, in other orders).
bfloat16 values (float32 locations and weights, as under autocast): the output and the
value gradient come back in bfloat16, so within bfloat16's rounding (relative 1e-2); the
location and weight gradients are float32 from the same (exactly upcast) values and the
same bfloat16 output gradient: 1e-5.
"""
import pytest
import torch
from mmcv.ops.multi_scale_deform_attn import multi_scale_deformable_attn_pytorch as reference

from projects.dino_dinov2.models import msda_triton
from projects.dino_dinov2.models.triton_deformable_attention import triton_runs_on
from tiny_models import build_detector, loss_and_grads, make_batch

DEVICE = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
pytestmark = pytest.mark.skipif(not triton_runs_on(DEVICE),
                                reason='Triton is part of the install; this needs '
                                       'TRITON_INTERPRET=1 before import (conftest.py)')


def _levels(shapes):
    shapes = torch.tensor(shapes)
    starts = torch.cat([torch.zeros(1, dtype=torch.long),
                        (shapes[:, 0] * shapes[:, 1]).cumsum(0)[:-1]])
    return shapes, starts, int((shapes[:, 0] * shapes[:, 1]).sum())


def _inputs(shapes, batch=2, queries=11, heads=2, dim=8, points=3, seed=0):
    shapes, starts, size = _levels(shapes)
    g = torch.Generator().manual_seed(seed)
    levels = len(shapes)
    value = torch.randn(batch, size, heads, dim, generator=g)
    # locations inside, on the border (0, 1, pixel centres) and outside (-0.2 .. 1.2)
    loc = torch.rand(batch, queries, heads, levels, points, 2, generator=g) * 1.4 - 0.2
    loc[:, 0] = 0.0
    loc[:, 1] = 1.0
    w = shapes[:, 1].float().view(1, 1, levels, 1)
    h = shapes[:, 0].float().view(1, 1, levels, 1)
    loc[:, 2, ..., 0] = (torch.floor(loc[:, 2, ..., 0] * w) + 0.5) / w  # exact centres
    loc[:, 2, ..., 1] = (torch.floor(loc[:, 2, ..., 1] * h) + 0.5) / h
    attn = torch.rand(batch, queries, heads, levels, points, generator=g)
    attn = (attn / attn.sum((-1, -2), keepdim=True))
    return value, shapes, starts, loc, attn


def _forward_backward(fn, value, shapes, starts, loc, attn, grad):
    value, loc, attn = (t.detach().to(DEVICE).requires_grad_() for t in (value, loc, attn))
    args = (value, shapes.to(DEVICE)) + ((starts.to(DEVICE), ) if fn is msda_triton else ())
    out = fn(*args, loc, attn)
    (out.float() * grad.to(DEVICE)).sum().backward()
    return out, value.grad, loc.grad, attn.grad


def _compare(value, shapes, starts, loc, attn, dtype=torch.float32):
    grad = torch.randn(value.shape[0], loc.shape[1], value.shape[2] * value.shape[3])
    grad = grad.to(dtype).float()  # what flows back into an output of that dtype
    got = _forward_backward(msda_triton, value.to(dtype), shapes, starts, loc, attn, grad)
    want = _forward_backward(reference, value.to(dtype).float(), shapes, starts, loc, attn,
                             grad)
    return got, want


# (H, W) per level: odd sizes, a 1x1 level, one level
SHAPE_SETS = [[(5, 7), (3, 2), (1, 1)], [(4, 4)], [(9, 6), (5, 3), (3, 2), (1, 1)]]


@pytest.mark.parametrize('shapes', SHAPE_SETS)
def test_float32_forward_and_gradients_equal_reference(shapes):
    (out, g_value, g_loc, g_attn), want = _compare(*_inputs(shapes))
    assert out.dtype == torch.float32 and out.shape == want[0].shape
    for name, a, b in zip(('out', 'value', 'loc', 'attn'), (out, g_value, g_loc, g_attn),
                          want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5, msg=name)


def test_bfloat16_values_read_as_they_are():
    value, shapes, starts, loc, attn = _inputs(SHAPE_SETS[0], heads=2, dim=16)
    (out, g_value, g_loc, g_attn), want = _compare(value, shapes, starts, loc, attn,
                                                   dtype=torch.bfloat16)
    assert out.dtype == g_value.dtype == torch.bfloat16  # no cast to float32 around it
    assert g_loc.dtype == g_attn.dtype == torch.float32
    for name, a, b in (('out', out, want[0]), ('value', g_value, want[1])):
        assert (a.float() - b).norm() <= 1e-2 * b.norm(), name
    torch.testing.assert_close(g_loc, want[2], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(g_attn, want[3], rtol=1e-5, atol=1e-5)


def test_half_inputs_throughout():
    value, shapes, starts, loc, attn = _inputs(SHAPE_SETS[1])
    out = msda_triton(value.half().to(DEVICE), shapes.to(DEVICE), starts.to(DEVICE),
                      loc.half().to(DEVICE), attn.half().to(DEVICE))
    want = reference(value.half().float(), shapes, loc.half().float(), attn.half().float())
    assert out.dtype == torch.float16
    assert (out.float().cpu() - want).norm() <= 1e-3 * want.norm()


def test_detector_training_step_equals_pytorch_path():
    """The tiny synthetic detector with deform_attn_impl='triton' against 'pytorch':
    same weights, same batch, same losses and head gradients."""
    # one layer each and 2 heads: the interpreter runs each program in Python
    heads = dict(num_heads=2)
    small = dict(encoder=dict(num_layers=1, layer_cfg=dict(self_attn_cfg=heads)),
                 decoder=dict(num_layers=1, layer_cfg=dict(cross_attn_cfg=heads)))
    triton_model = build_detector(deform_attn_impl='triton', **small).to(DEVICE)
    torch_model = build_detector(deform_attn_impl='pytorch', **small).to(DEVICE)
    torch_model.load_state_dict(triton_model.state_dict())
    batch = make_batch(triton_model, sizes=((48, 64), (64, 48)))
    l_tri, g_tri = loss_and_grads(triton_model, batch)
    l_ref, g_ref = loss_and_grads(torch_model, batch)
    assert l_tri.keys() == l_ref.keys()
    for k in l_ref:
        torch.testing.assert_close(l_tri[k], l_ref[k], rtol=1e-4, atol=1e-5, msg=k)
    head = [k for k in g_ref if k.startswith(('bbox_head.', 'decoder.', 'encoder.'))]
    assert head and g_tri.keys() == g_ref.keys()
    for k in head:
        assert (g_tri[k] - g_ref[k]).norm() <= 1e-3 * g_ref[k].norm() + 1e-6, k


def test_cpu_tensors_without_the_interpreter_are_refused(monkeypatch):
    monkeypatch.setenv('TRITON_INTERPRET', '0')
    if DEVICE.type == 'cpu':
        value, shapes, starts, loc, attn = _inputs(SHAPE_SETS[1])
        with pytest.raises(RuntimeError, match='Triton kernels run on CUDA tensors'):
            msda_triton(value, shapes, starts, loc, attn)
