"""The DINO detector built from the project's configs, on the CPU."""
import copy
import os.path as osp

import pytest
import torch
from mmdet.registry import MODELS
from mmdet.testing import demo_mm_inputs
from mmengine.config import Config
from mmengine.optim import build_optim_wrapper
from mmengine.registry import init_default_scope

import projects.dino_dinov2  # noqa: F401
from helpers import REPO, SYNTHETIC_CONFIG

RECIPE_CONFIGS = ['dino_dinov2_b_12ep.py', 'dino_dinov2_s_12ep.py', 'dino_dinov2_b_50ep.py',
                  'dino_dinov2_s_50ep.py']


def build(cfg):
    init_default_scope('mmdet')
    return MODELS.build(cfg.model)


def tiny_cfg(**backbone):
    cfg = Config.fromfile(SYNTHETIC_CONFIG)
    cfg.model.backbone.update(backbone)
    return cfg


def batch(model, n=2, size=96, training=True):
    torch.manual_seed(0)
    data = demo_mm_inputs(batch_size=n, image_shapes=[(3, size, size)] * n, num_items=[3] * n,
                          num_classes=3, with_mask=False)
    return model.data_preprocessor(data, training=training)


@pytest.mark.parametrize('name', RECIPE_CONFIGS)
def test_recipe_configs_build(name):
    cfg = Config.fromfile(osp.join(REPO, 'configs', name))
    cfg.model.backbone.pretrained = False  # no hub access here
    model = build(cfg)
    vit = model.backbone.vit
    assert model.backbone.fully_frozen
    assert model.num_queries == 900 and model.bbox_head.num_classes == 80
    assert vit.patch_embed.proj.kernel_size == (16, 16)
    assert vit.embed_dim == (768 if '_b_' in name else 384)
    assert len(model.encoder.layers) == 6 and len(model.decoder.layers) == 6
    assert cfg.optim_wrapper.optimizer.lr == 1e-4
    assert cfg.optim_wrapper.paramwise_cfg.custom_keys.backbone.lr_mult == 0.1
    assert cfg.optim_wrapper.clip_grad.max_norm == 0.1
    # iterations at total batch 16 (the built loop and scheduler: test_recipe_parity.py)
    milestones = cfg.param_scheduler[0].milestones
    assert milestones == ([82500] if '12ep' in name else [300000])
    assert not cfg.param_scheduler[0].by_epoch
    assert cfg.train_dataloader.batch_size * 8 == cfg.auto_scale_lr.base_batch_size


def test_frozen_backbone_unchanged_head_changes():
    cfg = tiny_cfg(frozen=True)
    model = build(cfg)
    model.init_weights()
    model.train()
    optim = build_optim_wrapper(model, copy.deepcopy(cfg.optim_wrapper))
    before = copy.deepcopy(model.state_dict())
    data = batch(model)
    losses = model.loss(data['inputs'], data['data_samples'])
    loss, _ = model.parse_losses(losses)
    optim.update_params(loss)
    after = model.state_dict()
    backbone_keys = [k for k in before if k.startswith('backbone.')]
    head_keys = [k for k in before if k.startswith('bbox_head.')]
    assert backbone_keys and head_keys
    for k in backbone_keys:
        assert torch.equal(before[k], after[k]), k
    assert any(not torch.equal(before[k], after[k]) for k in head_keys)


def test_bf16_autocast_training_step_cpu():
    cfg = tiny_cfg()
    cfg.optim_wrapper.type = 'AutoAmpOptimWrapper'
    model = build(cfg)
    model.init_weights()
    model.train()
    optim = build_optim_wrapper(model, copy.deepcopy(cfg.optim_wrapper))
    assert optim.cast_dtype == torch.bfloat16
    data = batch(model)
    with optim.optim_context(model):
        losses = model.loss(data['inputs'], data['data_samples'])
        assert torch.is_autocast_enabled('cpu')
    loss, _ = model.parse_losses(losses)
    assert torch.isfinite(loss)
    w = model.bbox_head.cls_branches[0].weight.detach().clone()
    optim.update_params(loss)
    assert not torch.equal(w, model.bbox_head.cls_branches[0].weight)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_predict_returns_boxes():
    model = build(tiny_cfg())
    model.init_weights()
    model.eval()
    with torch.no_grad():
        data = batch(model, training=False)
        results = model.predict(data['inputs'], data['data_samples'])
    assert len(results) == 2
    inst = results[0].pred_instances
    assert inst.bboxes.shape == (50, 4) and inst.scores.shape == (50, )
