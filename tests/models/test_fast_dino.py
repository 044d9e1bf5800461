"""The whole detector: fast mode against the original-equivalent mode, activation
checkpointing against none, and the configs' choice of mode."""
import copy
import os.path as osp

import pytest
import torch
from mmcv.ops import MultiScaleDeformableAttention
from mmengine.config import Config
from mmengine.optim import build_optim_wrapper

from helpers import REPO
from projects.dino_dinov2.models import (FastDINO, SwitchableMultiScaleDeformableAttention,
                                         is_checkpointed)
from tiny_models import build_detector, build_pair, loss_and_grads, make_batch

FROZEN = dict(backbone=dict(frozen=True))  # the recipe's frozen ViT


def _assert_close_dicts(a, b, rtol, atol):
    assert a.keys() == b.keys() and a
    for k in a:
        # mmdet's classification losses are (1,) tensors, the batched ones 0-d: the values
        torch.testing.assert_close(a[k].reshape(-1), b[k].reshape(-1), rtol=rtol, atol=atol,
                                   msg=k)


def test_original_mode_is_built_the_original_way():
    fast, original = build_pair(**FROZEN)
    assert type(fast) is FastDINO and type(original) is FastDINO
    msda = [m for m in original.modules() if isinstance(m, MultiScaleDeformableAttention)]
    assert len(msda) == 4  # 2 encoder self-attentions + 2 decoder cross-attentions
    assert all(type(m) is SwitchableMultiScaleDeformableAttention for m in msda)
    assert all(m.impl == 'pytorch' for m in msda)
    assert {m.impl for m in fast.modules() if isinstance(m, MultiScaleDeformableAttention)} \
        == {'auto'}
    # timm's fused attention was on in the original (timm's default)
    assert all(b.attn.fused_attn for b in original.backbone.vit.blocks)
    assert all(b.attn.fused_attn for b in fast.backbone.vit.blocks)
    assert not original.backbone.frozen_no_grad and fast.backbone.frozen_no_grad
    # detrex's matcher: a cost matrix per decoder layer for the whole batch, one host copy
    assert type(original.bbox_head).__name__ == 'BatchMatchingDINOHead'
    assert original.bbox_head.matching == 'layer' and fast.bbox_head.matching == 'step'
    assert original.bbox_head.assigner.batched_costs
    assert not fast.bbox_head.assigner.batched_costs
    assert type(fast.bbox_head).__name__ == 'BatchMatchingDINOHead'
    assert fast.state_dict().keys() == original.state_dict().keys()


def test_fast_mode_same_losses_and_gradients_as_original():
    fast, original = build_pair(**FROZEN)
    batch = make_batch(fast)
    l_fast, g_fast = loss_and_grads(fast, batch)
    l_orig, g_orig = loss_and_grads(original, batch)
    # the same arithmetic up to float rounding (on the CPU both modes sample deformable
    # attention in PyTorch; the matchings are the same)
    _assert_close_dicts(l_fast, l_orig, rtol=1e-4, atol=1e-5)
    assert not any(k.startswith('backbone.') for k in g_fast)
    assert any(k.startswith('bbox_head.') for k in g_fast)
    _assert_close_dicts(g_fast, g_orig, rtol=1e-3, atol=1e-6)


def test_fast_mode_bf16_training_step():
    cfg = Config.fromfile(osp.join(REPO, 'configs', 'dino_dinov2_synthetic.py'))
    cfg.optim_wrapper.type = 'AutoAmpOptimWrapper'
    model = build_detector(**FROZEN)
    model.train()
    optim = build_optim_wrapper(model, copy.deepcopy(cfg.optim_wrapper))
    batch = make_batch(model)
    with optim.optim_context(model):
        losses = model.loss(batch['inputs'], batch['data_samples'])
    loss, _ = model.parse_losses(losses)
    assert torch.isfinite(loss)
    w = model.bbox_head.cls_branches[0].weight.detach().clone()
    optim.update_params(loss)
    assert not torch.equal(w, model.bbox_head.cls_branches[0].weight)


def test_activation_checkpointing_same_gradients_less_saved():
    plain = build_detector(**FROZEN)
    ckpt = build_detector(checkpoint_encoder=True, checkpoint_decoder=True, **FROZEN)
    ckpt.load_state_dict(plain.state_dict())
    assert all(is_checkpointed(m) for m in [*ckpt.encoder.layers, *ckpt.decoder.layers])
    assert not any(is_checkpointed(m) for m in plain.modules())
    assert ckpt.state_dict().keys() == plain.state_dict().keys()
    batch = make_batch(plain)

    def saved_bytes(model):
        total = [0]

        def pack(t):
            total[0] += t.numel() * t.element_size()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            result = loss_and_grads(model, batch)
        return result, total[0]

    (l_plain, g_plain), bytes_plain = saved_bytes(plain)
    (l_ckpt, g_ckpt), bytes_ckpt = saved_bytes(ckpt)
    _assert_close_dicts(l_ckpt, l_plain, rtol=0, atol=0)
    _assert_close_dicts(g_ckpt, g_plain, rtol=1e-5, atol=1e-7)
    assert bytes_ckpt < 0.8 * bytes_plain, (bytes_ckpt, bytes_plain)
    # eval / no-grad runs skip the recomputation; copies (EMA) checkpoint themselves
    twin = copy.deepcopy(ckpt)
    layer = twin.encoder.layers[0]
    assert is_checkpointed(layer) and layer.forward.__self__ is layer


def test_deform_attn_impl_checked():
    with pytest.raises(ValueError, match="deform_attn_impl must be one of"):
        build_detector(deform_attn_impl='cuda')


@pytest.mark.parametrize('name', ['dino_dinov2_b_12ep.py', 'dino_dinov2_s_50ep.py'])
def test_recipe_configs_default_to_the_fast_path(name):
    cfg = Config.fromfile(osp.join(REPO, 'configs', name))
    m = cfg.model
    assert m.type == 'FastDINO' and m.deform_attn_impl == 'auto'
    assert not m.checkpoint_encoder and not m.checkpoint_decoder
    assert m.backbone.frozen_no_grad and m.backbone.fused_attn and not m.backbone.compile
    assert m.bbox_head.type == 'BatchMatchingDINOHead'
    assert m.train_cfg.assigner.type == 'BatchHungarianAssigner'
    assert m.data_preprocessor.non_blocking
    for loader in (cfg.train_dataloader, cfg.val_dataloader):
        assert loader.num_workers >= 4 and loader.pin_memory and loader.persistent_workers


@pytest.mark.parametrize('name', ['dino_dinov2_b_12ep_original.py',
                                  'dino_dinov2_s_12ep_original.py'])
def test_original_configs_keep_the_recipe(name):
    cfg = Config.fromfile(osp.join(REPO, 'configs', name))
    recipe = Config.fromfile(osp.join(REPO, 'configs', name.replace('_original', '')))
    m = cfg.model
    assert m.deform_attn_impl == 'pytorch' and m.backbone.fused_attn
    assert not m.backbone.frozen_no_grad and not m.backbone.compile
    assert m.bbox_head.type == 'BatchMatchingDINOHead' and m.bbox_head.matching == 'layer'
    assert m.train_cfg.assigner.batched_costs
    assert cfg.optim_wrapper.type == 'OptimWrapper'  # full precision unless --amp
    assert cfg.amp_dtype == 'float16'  # --amp: the original's float16 + GradScaler
    # everything but the execution switches is the recipe's
    for key in ('num_queries', 'encoder', 'decoder', 'neck', 'dn_cfg', 'positional_encoding'):
        assert m[key] == recipe.model[key], key
    assert m.backbone.model_name == recipe.model.backbone.model_name
    assert m.train_cfg.assigner.match_costs == recipe.model.train_cfg.assigner.match_costs
    assert cfg.train_dataloader == recipe.train_dataloader
