import math

import pytest
import timm
import torch

from projects.dino_dinov2.models import TimmDinov2, WeightFileError

SMALL = 'vit_small_patch14_dinov2.lvd142m'
BASE = 'vit_base_patch14_dinov2.lvd142m'


@pytest.mark.parametrize('model_name,dim', [(SMALL, 384), (BASE, 768)])
@pytest.mark.parametrize('hw', [(64, 96), (70, 45)])
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
