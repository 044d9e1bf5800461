"""The timm backbone (``TimmDinov2``): DINOv2 (timm's VisionTransformer) and DINOv3
(timm's Eva, rotary embedding and register tokens) through one module: shapes at any size,
weight files in timm's and the original releases' layouts, freezing, errors, and the
execution choices against their reference (fused attention, bfloat16, torch.compile)."""
import copy
import math

import pytest
import timm
import torch
from mmengine.optim import build_optim_wrapper
from mmengine.registry import init_default_scope

from helpers import REPO, TINY_MODEL, init_weights_quietly
from projects.dino_dinov2 import cli
from projects.dino_dinov2.models import TimmDinov2, WeightFileError, timm_backbone

from mmdet.registry import MODELS

SMALL = 'vit_small_patch14_dinov2.lvd142m'
BASE = 'vit_base_patch14_dinov2.lvd142m'
V3_SMALL = 'vit_small_patch16_dinov3.lvd1689m'
V3_BASE = 'vit_base_patch16_dinov3.lvd1689m'


@pytest.mark.parametrize('model_name,dim', [
    (SMALL, 384), (BASE, 768), (V3_SMALL, 384), (V3_BASE, 768)])  # DINOv3: rotary, registers
@pytest.mark.parametrize('hw', [(64, 96), (70, 45)])  # multiples of 16 and not
def test_output_shapes_any_size(model_name, dim, hw):
    # Real S and B widths; two blocks keep the test fast (depth does not change shapes).
    backbone = TimmDinov2(model_name, pretrained=False, model_kwargs=dict(depth=2))
    outs = backbone(torch.randn(2, 3, *hw))
    assert isinstance(outs, tuple) and len(outs) == 1
    assert outs[0].shape == (2, dim, math.ceil(hw[0] / 16), math.ceil(hw[1] / 16))


def test_out_indices_and_final_norm():
    backbone = TimmDinov2(SMALL, pretrained=False, out_indices=(1, -1), final_norm=True,
                           model_kwargs=dict(depth=4))
    outs = backbone(torch.randn(1, 3, 32, 48))
    assert [o.shape for o in outs] == [(1, 384, 2, 3)] * 2
    assert backbone.out_indices == (1, 3)
    assert isinstance(backbone.vit.norm, torch.nn.LayerNorm)
    # without the final norm it is dropped, and blocks after the last index too
    pruned = TimmDinov2(SMALL, pretrained=False, out_indices=(1, ), model_kwargs=dict(depth=4))
    assert len(pruned.vit.blocks) == 2 and isinstance(pruned.vit.norm, torch.nn.Identity)


def _patch14_file(tmp_path, layout='timm'):
    """A patch-14 DINOv2 ViT-S checkpoint (random weights) as timm or the original saves it."""
    torch.manual_seed(0)  # the same weights for every layout
    state = timm.create_model(SMALL, pretrained=False, depth=2).state_dict()
    if layout == 'original':  # facebookresearch/dinov2 teacher checkpoint layout
        state = {'teacher': {f'backbone.{k}': v for k, v in state.items()}}
        state['teacher']['backbone.mask_token'] = torch.zeros(1, 384)
    path = tmp_path / f'{layout}.pth'
    torch.save(state, path)
    return str(path)


def test_weight_file_errors_name_file_and_key(tmp_path):
    with pytest.raises(WeightFileError, match='not found: .*missing.pth'):
        TimmDinov2(SMALL, pretrained=str(tmp_path / 'missing.pth'))
    bad = tmp_path / 'garbage.pth'
    bad.write_bytes(b'this is not a checkpoint')
    with pytest.raises(WeightFileError, match='garbage.pth is not a readable weight file'):
        TimmDinov2(SMALL, pretrained=str(bad))
    base = timm.create_model(BASE, pretrained=False, depth=2)
    wrong = tmp_path / 'vit_b.pth'
    torch.save(base.state_dict(), wrong)
    with pytest.raises(WeightFileError, match=r"vit_b.pth does not match.*first 'cls_token'"):
        TimmDinov2(SMALL, pretrained=str(wrong), model_kwargs=dict(depth=2))
    state = timm.create_model(SMALL, pretrained=False, depth=2).state_dict()
    del state['blocks.1.mlp.fc2.bias']
    partial = tmp_path / 'partial.pth'
    torch.save(state, partial)
    with pytest.raises(WeightFileError, match=r"1 missing, first 'blocks.1.mlp.fc2.bias'"):
        TimmDinov2(SMALL, pretrained=str(partial), model_kwargs=dict(depth=2))


def test_unfreeze_last_blocks():
    backbone = TimmDinov2(SMALL, pretrained=False, trainable_blocks=1,
                           model_kwargs=dict(depth=3))
    backbone.train()
    trainable = {n for n, p in backbone.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith('vit.blocks.2.') for n in trainable)
    assert backbone.vit.blocks[2].training and not backbone.vit.blocks[0].training
    out = backbone(torch.randn(1, 3, 32, 32))[0]
    out.sum().backward()
    assert backbone.vit.blocks[2].mlp.fc1.weight.grad is not None
    assert backbone.vit.blocks[0].mlp.fc1.weight.grad is None


# --- DINOv3 (Eva) ----------------------------------------------------------------------

@pytest.mark.parametrize('name', ['TimmDinov2', 'TimmDinov3', 'TimmDinoViT'])
def test_registered_under_its_name_and_the_earlier_ones(name):
    init_default_scope('mmdet')
    built = MODELS.build(dict(type=name, model_name=V3_SMALL, pretrained=False,
                              model_kwargs=dict(depth=1)))
    assert isinstance(built, TimmDinov2)


def _meta_layout(state):
    """Key names of Meta's DINOv3 releases: storage_tokens, ls1/ls2.gamma, the (zero) qkv
    bias of the distilled models, the pretraining-only mask token and rope periods."""
    out = {}
    for k, v in state.items():
        k = k.replace('reg_token', 'storage_tokens').replace('gamma_1', 'ls1.gamma')
        out[k.replace('gamma_2', 'ls2.gamma')] = v
        if k.endswith('attn.qkv.weight'):
            out[k.replace('weight', 'bias')] = torch.zeros(v.shape[0])
    out['mask_token'] = torch.zeros(1, state['cls_token'].shape[-1])
    out['rope_embed.periods'] = torch.arange(16, dtype=torch.float32)
    return out


@pytest.mark.parametrize('family, layout', [('dinov2', 'timm'), ('dinov2', 'original'),
                                            ('dinov3', 'timm'), ('dinov3', 'meta')])
def test_local_weight_file_loads_as_timm_would(tmp_path, family, layout):
    """A weight file in timm's layout or the release's (Meta's original DINOv2 teacher,
    DINOv3 names): DINOv2's patch-14 weights resampled to 16 as timm's own local-file
    route does them, DINOv3's loaded as saved."""
    if family == 'dinov2':
        path = _patch14_file(tmp_path, layout)
        ours = TimmDinov2(SMALL, pretrained=path, patch_size=16, final_norm=True,
                          model_kwargs=dict(depth=2)).vit.state_dict()
        want = timm.create_model(SMALL, pretrained=True, num_classes=0, patch_size=16,
                                 depth=2, dynamic_img_size=True, dynamic_img_pad=True,
                                 pretrained_cfg_overlay=dict(file=_patch14_file(tmp_path))
                                 ).state_dict()
        assert ours['patch_embed.proj.weight'].shape == (384, 3, 16, 16)
        # and it is really a resampling of the file's 14x14 kernel
        src = torch.load(_patch14_file(tmp_path), weights_only=True)
        resampled = timm.layers.resample_patch_embed(src['patch_embed.proj.weight'], [16, 16])
        torch.testing.assert_close(ours['patch_embed.proj.weight'], resampled)
    else:
        torch.manual_seed(0)
        source = timm.create_model(V3_SMALL, pretrained=False, num_classes=0, depth=2)
        for p in source.parameters():  # not timm's init pattern: every tensor distinct
            p.data.normal_()
        want = source.state_dict()
        path = tmp_path / f'{layout}.pth'
        torch.save(want if layout == 'timm' else _meta_layout(want), path)
        ours = TimmDinov2(V3_SMALL, pretrained=str(path), final_norm=True,
                          model_kwargs=dict(depth=2)).vit.state_dict()
    assert ours.keys() == want.keys()
    for k, v in want.items():
        torch.testing.assert_close(ours[k], v, rtol=0, atol=0, msg=k)


def test_mismatched_weight_file_names_the_key(tmp_path):
    state = timm.create_model(V3_BASE, pretrained=False, num_classes=0, depth=2).state_dict()
    path = tmp_path / 'base.pth'
    torch.save(state, path)
    with pytest.raises(WeightFileError, match=r"does not match the backbone: .*'cls_token'"):
        TimmDinov2(V3_SMALL, pretrained=str(path), model_kwargs=dict(depth=2))


def test_refused_download_points_at_the_license_and_the_local_file(monkeypatch):
    def refuse(*args, **kwargs):  # what huggingface_hub raises for a gated repository
        raise OSError('401 Client Error: Cannot access gated repo for url https://...')
    monkeypatch.setattr(timm_backbone.timm, 'create_model', refuse)
    with pytest.raises(WeightFileError) as err:
        TimmDinov2(V3_BASE, pretrained=True)
    msg = str(err.value)
    assert 'cannot download the pretrained weights of vit_base_patch16_dinov3' in msg
    assert "gated behind Meta's license" in msg and 'model.backbone.pretrained=' in msg


def test_unknown_name_suggests_close_ones():
    with pytest.raises(WeightFileError, match='did you mean vit_base_patch16_dinov3'):
        TimmDinov2('vit_base_patch16_dinov3x', pretrained=False)


@pytest.mark.parametrize('config', ['dino_dinov2_s_12ep.py', 'dino_dinov3_s_12ep.py'])
def test_frozen_backbone_no_graph_unchanged_by_a_training_step(config):
    """The recipe's frozen ViT: eval mode kept in train(), no gradients, no graph (run
    under no_grad), unchanged by a step that trains the pyramid and the head."""
    cfg = cli.load_config(f'{REPO}/configs/{config}',
                          {'model.backbone.pretrained': False, **TINY_MODEL})
    init_default_scope('mmdet')
    model = init_weights_quietly(MODELS.build(cfg.model))
    model.train()
    backbone = model.backbone
    assert not backbone.vit.training and not any(p.requires_grad for p in backbone.parameters())
    assert backbone(torch.randn(1, 3, 32, 48))[0].grad_fn is None
    optim = build_optim_wrapper(model, copy.deepcopy(cfg.optim_wrapper))
    before = copy.deepcopy(model.state_dict())
    from tiny_models import make_batch
    batch = make_batch(model)
    losses = model.loss(batch['inputs'], batch['data_samples'])
    optim.update_params(model.parse_losses(losses)[0])
    after = model.state_dict()
    backbone_keys = [k for k in before if k.startswith('backbone.')]
    assert backbone_keys and all(torch.equal(before[k], after[k]) for k in backbone_keys)
    for part in ('neck.', 'bbox_head.'):
        assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith(part))


# --- execution choices: fused attention, bfloat16, compile ----------------------------

NAME = 'vit_small_patch14_dinov2'
FAMILIES = {'dinov2': NAME, 'dinov3': 'vit_small_patch16_dinov3'}  # timm's ViT and Eva
TINY = dict(depth=2, embed_dim=192, num_heads=3)


def _pair(model_kwargs=TINY, name=NAME, **options):
    """(reference, other) tiny backbones with the same weights; ``options`` for other."""
    torch.manual_seed(0)
    ref = TimmDinov2(name, pretrained=False, img_size=64, fused_attn=False,
                     model_kwargs=model_kwargs)
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
    ref, fused = _pair(name=FAMILIES[family], fused_attn=True)
    x = torch.randn(2, 3, *hw)
    torch.testing.assert_close(fused(x)[0], ref(x)[0], rtol=1e-5, atol=1e-5)


def test_frozen_bf16_autocast_close_to_float32():
    """Under AMP the frozen ViT runs in bfloat16 autocast, without a graph."""
    ref, fast = _pair(fused_attn=True)
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
                      fused_attn=True,
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
