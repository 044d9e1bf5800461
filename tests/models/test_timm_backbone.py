"""The timm backbone (``TimmDinov2``): DINOv2 (timm's VisionTransformer) and DINOv3
(timm's Eva, rotary embedding and register tokens) through one module: shapes at any size,
weight files in timm's and the original releases' layouts, freezing, errors."""
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


@pytest.mark.parametrize('model_name,dim,vit_class', [
    (SMALL, 384, 'VisionTransformer'), (BASE, 768, 'VisionTransformer'),
    (V3_SMALL, 384, 'Eva'), (V3_BASE, 768, 'Eva')])  # DINOv3: rotary embedding, registers
@pytest.mark.parametrize('hw', [(64, 96), (70, 45)])  # multiples of 16 and not
def test_output_shapes_any_size(model_name, dim, vit_class, hw):
    # Real S and B widths; two blocks keep the test fast (depth does not change shapes).
    backbone = TimmDinov2(model_name, pretrained=False, model_kwargs=dict(depth=2))
    assert type(backbone.vit).__name__ == vit_class
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


@pytest.mark.parametrize('layout', ['timm', 'original'])
def test_local_file_equals_timm_load_with_resampling(tmp_path, layout):
    path = _patch14_file(tmp_path, layout)
    ours = TimmDinov2(SMALL, pretrained=path, patch_size=16, final_norm=True,
                       model_kwargs=dict(depth=2))
    ref = timm.create_model(SMALL, pretrained=True, num_classes=0, patch_size=16, depth=2,
                            dynamic_img_size=True, dynamic_img_pad=True,
                            pretrained_cfg_overlay=dict(file=_patch14_file(tmp_path)))
    ref_state = ref.state_dict()
    ours_state = ours.vit.state_dict()
    assert ours_state['patch_embed.proj.weight'].shape == (384, 3, 16, 16)
    for k, v in ours_state.items():
        torch.testing.assert_close(v, ref_state[k], msg=k)
    # and it is really a resampling of the file's 14x14 kernel
    src = torch.load(_patch14_file(tmp_path), weights_only=True)
    resampled = timm.layers.resample_patch_embed(src['patch_embed.proj.weight'], [16, 16])
    torch.testing.assert_close(ours_state['patch_embed.proj.weight'], resampled)


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


def test_frozen_stays_eval_and_gradient_free():
    backbone = TimmDinov2(SMALL, pretrained=False, model_kwargs=dict(depth=3))
    backbone.train()
    assert not backbone.vit.training
    assert not any(p.requires_grad for p in backbone.parameters())
    out = backbone(torch.randn(1, 3, 32, 32))[0]
    assert not out.requires_grad


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

@pytest.mark.parametrize('name', ['TimmDinov2', 'TimmDinov2', 'TimmDinov3'])
def test_registered_under_its_name_and_the_earlier_ones(name):
    init_default_scope('mmdet')
    built = MODELS.build(dict(type=name, model_name=V3_SMALL, pretrained=False,
                              model_kwargs=dict(depth=1)))
    assert type(built) is TimmDinov2


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


@pytest.mark.parametrize('layout', ['timm', 'meta'])
def test_local_weight_file_loads_equal_to_its_model(tmp_path, layout):
    torch.manual_seed(0)
    source = timm.create_model(V3_SMALL, pretrained=False, num_classes=0, depth=2)
    for p in source.parameters():  # not timm's init pattern: every tensor distinct
        p.data.normal_()
    state = source.state_dict()
    path = tmp_path / f'{layout}.pth'
    torch.save(state if layout == 'timm' else _meta_layout(state), path)
    ours = TimmDinov2(V3_SMALL, pretrained=str(path), final_norm=True, model_kwargs=dict(depth=2))
    loaded = ours.vit.state_dict()
    assert loaded.keys() == state.keys()
    for k, v in state.items():
        torch.testing.assert_close(loaded[k], v, rtol=0, atol=0, msg=k)


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


def test_frozen_backbone_unchanged_by_a_training_step():
    cfg = cli.load_config(f'{REPO}/configs/dino_dinov3_s_12ep.py',
                          {'model.backbone.pretrained': False, **TINY_MODEL})
    init_default_scope('mmdet')
    model = init_weights_quietly(MODELS.build(cfg.model))
    model.train()
    optim = build_optim_wrapper(model, copy.deepcopy(cfg.optim_wrapper))
    before = copy.deepcopy(model.state_dict())
    from tiny_models import make_batch
    batch = make_batch(model)
    losses = model.loss(batch['inputs'], batch['data_samples'])
    optim.update_params(model.parse_losses(losses)[0])
    after = model.state_dict()
    backbone = [k for k in before if k.startswith('backbone.')]
    assert backbone and all(torch.equal(before[k], after[k]) for k in backbone)
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith('neck.'))
