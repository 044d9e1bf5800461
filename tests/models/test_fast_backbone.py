"""Fast backbone paths against their reference: fused attention, the frozen ViT without
autograd (float32 and bfloat16 autocast), and torch.compile."""
import copy

import pytest
import torch

from projects.dino_dinov2.models import TimmDinov2

NAME = 'vit_small_patch14_dinov2'
FAMILIES = {'dinov2': NAME, 'dinov3': 'vit_small_patch16_dinov3'}  # timm's ViT and Eva
TINY = dict(depth=2, embed_dim=192, num_heads=3)


def _pair(model_kwargs=TINY, name=NAME, **options):
    """(reference, other) tiny backbones with the same weights; ``options`` for other."""
    torch.manual_seed(0)
    ref = TimmDinov2(name, pretrained=False, img_size=64, fused_attn=False,
                      frozen_no_grad=False, model_kwargs=model_kwargs)
    other = TimmDinov2(name, pretrained=False, img_size=64, model_kwargs=model_kwargs,
                        **options)
    other.load_state_dict(ref.state_dict())
    return ref.train(), other.train()


@pytest.mark.parametrize('family', FAMILIES)
def test_fused_attention_switch_reaches_every_block(family):
    ref, fused = _pair(name=FAMILIES[family], fused_attn=True)
    assert all(blk.attn.fused_attn for blk in fused.vit.blocks)
    assert not any(blk.attn.fused_attn for blk in ref.vit.blocks)


@pytest.mark.parametrize('family', FAMILIES)
@pytest.mark.parametrize('hw', [(64, 96), (70, 45)])
def test_fused_attention_matches_explicit(family, hw):
    ref, fused = _pair(name=FAMILIES[family], fused_attn=True, frozen_no_grad=False)
    x = torch.randn(2, 3, *hw)
    torch.testing.assert_close(fused(x)[0], ref(x)[0], rtol=1e-5, atol=1e-5)


def test_frozen_without_autograd_same_output_no_graph():
    ref, fast = _pair(fused_attn=False, frozen_no_grad=True)
    x = torch.randn(2, 3, 64, 80)
    out = fast(x)[0]
    assert out.grad_fn is None and not out.requires_grad
    torch.testing.assert_close(out, ref(x)[0], rtol=0, atol=0)


def test_frozen_bf16_autocast_close_to_float32():
    """Under AMP the frozen ViT runs in bfloat16 autocast, without a graph."""
    ref, fast = _pair(fused_attn=True, frozen_no_grad=True)
    x = torch.randn(2, 3, 64, 80)
    with torch.autocast('cpu', dtype=torch.bfloat16):
        out = fast(x)[0]
        # the matrix products really ran in bfloat16
        assert fast.vit.blocks[0].attn.qkv(torch.randn(1, 192)).dtype == torch.bfloat16
    assert out.grad_fn is None
    expected = ref(x)[0]
    err = (out.float() - expected).norm() / expected.norm()
    assert err < 2e-2, err
    # weights stay float32: switching AMP off needs no conversion
    assert all(p.dtype == torch.float32 for p in fast.parameters())


def test_compile_matches_eager_across_sizes_and_copies():
    # aot_eager: dynamo's capture and AOT autograd without inductor's C++ build, which
    # takes ~30 s on 2 cores here (checked by hand: equal within 1e-4). fullgraph: the
    # whole ViT forward is one graph; dynamic: new image sizes reuse it.
    ref, comp = _pair(model_kwargs=dict(depth=1, embed_dim=64, num_heads=2),
                      fused_attn=True, frozen_no_grad=True,
                      compile=dict(backend='aot_eager', fullgraph=True, dynamic=True))
    for hw in [(64, 48), (70, 45)]:
        x = torch.randn(2, 3, *hw)
        torch.testing.assert_close(comp(x)[0], ref(x)[0], rtol=1e-5, atol=1e-5)
    assert comp._compiled_forward is not None
    # EMA deep-copies the model: the copy must not call the original's compiled forward
    twin = copy.deepcopy(comp)
    assert twin._compiled_forward is None and comp._compiled_forward is not None


def test_compile_argument_checked():
    with pytest.raises(TypeError, match='compile must be a bool or a dict'):
        TimmDinov2(NAME, pretrained=False, compile='yes', model_kwargs=TINY)
