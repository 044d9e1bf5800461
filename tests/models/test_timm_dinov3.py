"""DINOv3 backbones (timm's Eva) through the same module as DINOv2."""
import copy
import math

import pytest
import timm
import torch
from mmengine.optim import build_optim_wrapper
from mmengine.registry import init_default_scope

from conftest import REPO, init_weights_quietly
from projects.dino_dinov2 import cli
from projects.dino_dinov2.models import TimmDinov2, WeightFileError
from projects.dino_dinov2.models import timm_backbone

from mmdet.registry import MODELS

SMALL = 'vit_small_patch16_dinov3.lvd1689m'
BASE = 'vit_base_patch16_dinov3.lvd1689m'


@pytest.mark.parametrize('model_name,dim', [(SMALL, 384), (BASE, 768)])
@pytest.mark.parametrize('hw', [(64, 96), (70, 45)])  # multiples of 16 and not
def test_output_shapes_any_size(model_name, dim, hw):
    backbone = TimmDinov2(model_name, pretrained=False, model_kwargs=dict(depth=2))
    assert type(backbone.vit).__name__ == 'Eva'  # rotary embedding, register tokens
    outs = backbone(torch.randn(2, 3, *hw))
    assert len(outs) == 1
    assert outs[0].shape == (2, dim, math.ceil(hw[0] / 16), math.ceil(hw[1] / 16))


def test_registered_under_both_names():
    init_default_scope('mmdet')
    built = MODELS.build(dict(type='TimmDinov3', model_name=SMALL, pretrained=False,
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


@pytest.mark.parametrize('layout', ['timm', 'meta'])
def test_local_weight_file_loads_equal_to_its_model(tmp_path, layout):
    torch.manual_seed(0)
    source = timm.create_model(SMALL, pretrained=False, num_classes=0, depth=2)
    for p in source.parameters():  # not timm's init pattern: every tensor distinct
        p.data.normal_()
    state = source.state_dict()
    path = tmp_path / f'{layout}.pth'
    torch.save(state if layout == 'timm' else _meta_layout(state), path)
    ours = TimmDinov2(SMALL, pretrained=str(path), final_norm=True, model_kwargs=dict(depth=2))
    loaded = ours.vit.state_dict()
    assert loaded.keys() == state.keys()
    for k, v in state.items():
        torch.testing.assert_close(loaded[k], v, rtol=0, atol=0, msg=k)


def test_mismatched_weight_file_names_the_key(tmp_path):
    state = timm.create_model(BASE, pretrained=False, num_classes=0, depth=2).state_dict()
    path = tmp_path / 'base.pth'
    torch.save(state, path)
    with pytest.raises(WeightFileError, match=r"does not match the backbone: .*'cls_token'"):
        TimmDinov2(SMALL, pretrained=str(path), model_kwargs=dict(depth=2))


def test_refused_download_points_at_the_license_and_the_local_file(monkeypatch):
    def refuse(*args, **kwargs):  # what huggingface_hub raises for a gated repository
        raise OSError('401 Client Error: Cannot access gated repo for url https://...')
    monkeypatch.setattr(timm_backbone.timm, 'create_model', refuse)
    with pytest.raises(WeightFileError) as err:
        TimmDinov2(BASE, pretrained=True)
    msg = str(err.value)
    assert 'cannot download the pretrained weights of vit_base_patch16_dinov3' in msg
    assert "gated behind Meta's license" in msg and 'model.backbone.pretrained=' in msg


def test_unknown_name_suggests_close_ones():
    with pytest.raises(WeightFileError, match='did you mean vit_base_patch16_dinov3'):
        TimmDinov2('vit_base_patch16_dinov3x', pretrained=False)


def test_fused_attention_switch_reaches_every_block():
    off = TimmDinov2(SMALL, pretrained=False, fused_attn=False, model_kwargs=dict(depth=2))
    on = TimmDinov2(SMALL, pretrained=False, model_kwargs=dict(depth=2))
    on.load_state_dict(off.state_dict())
    assert not any(b.attn.fused_attn for b in off.vit.blocks)
    assert all(b.attn.fused_attn for b in on.vit.blocks)
    x = torch.randn(1, 3, 48, 64)
    torch.testing.assert_close(on(x)[0], off(x)[0], rtol=1e-5, atol=1e-5)


def test_frozen_backbone_unchanged_by_a_training_step():
    cfg = cli.load_config(f'{REPO}/configs/dino_dinov3_s_12ep.py', {
        'model.backbone.pretrained': False, 'model.backbone.model_kwargs.depth': 1,
        'model.encoder.num_layers': 1, 'model.decoder.num_layers': 1,
        'model.num_queries': 20, 'model.dn_cfg.group_cfg.num_dn_queries': 8})
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
