"""--batch-size / --lr / --auto-scale-lr {linear,sqrt}: the arithmetic and what is logged."""
import math
import os.path as osp

import pytest
import torch
from mmengine.optim import build_optim_wrapper

from helpers import REPO, SYNTHETIC_CONFIG
from projects.dino_dinov2.cli import apply_batch_and_lr, load_config
from projects.dino_dinov2.engine import lr_scale_factor
from projects.dino_dinov2.engine.hooks.batch_lr_logger_hook import param_group_lrs
from projects.dino_dinov2.cli.lr_scaling import BatchLr

RECIPE = osp.join(REPO, 'configs', 'dino_dinov2_s_12ep.py')


@pytest.mark.parametrize('rule,total,factor', [
    ('linear', 32, 2.0), ('sqrt', 32, math.sqrt(2)), ('linear', 8, 0.5),
    ('sqrt', 64, 2.0), ('sqrt', 16, 1.0), (None, 32, 1.0)])
def test_scale_factor(rule, total, factor):
    assert lr_scale_factor(total, 16, rule) == pytest.approx(factor, rel=1e-15)


def test_recipe_batch_32_sqrt():
    """The original's example: base batch 16 at lr 1e-4; batch 32 -> 1e-4 x sqrt(2)."""
    cfg = load_config(RECIPE)
    assert cfg.auto_scale_lr.base_batch_size == 16 and cfg.optim_wrapper.optimizer.lr == 1e-4
    s = apply_batch_and_lr(cfg, batch_size=16, rule='sqrt', world_size=2)
    assert (s.total_batch, s.base_batch) == (32, 16)
    assert cfg.train_dataloader.batch_size == 16
    assert cfg.optim_wrapper.optimizer.lr == pytest.approx(1.4142135623730951e-4, rel=1e-15)
    assert cfg.auto_scale_lr.enable is False  # not scaled a second time by mmengine
    assert cfg.optim_wrapper.paramwise_cfg.custom_keys['backbone'].lr_mult == 0.1
    assert s.describe() == ('effective total batch 32 (16 per process x 2 processes); '
                            'lr 1.000e-04 x sqrt(32/16) (sqrt scaling, base batch 16) '
                            '= 1.414e-04')


def test_lr_flag_is_the_base_batch_lr_and_linear_scaling():
    cfg = load_config(RECIPE)
    s = apply_batch_and_lr(cfg, batch_size=2, lr=2e-4, rule='linear', world_size=4)
    assert cfg.optim_wrapper.optimizer.lr == pytest.approx(2e-4 * 8 / 16, rel=1e-15)
    assert s.describe().startswith('effective total batch 8 (2 per process x 4 processes); '
                                   'lr 2.000e-04 x 8/16 (linear scaling')
    cfg = load_config(RECIPE)
    s = apply_batch_and_lr(cfg, lr=3e-4)  # no rule: the lr as given
    assert cfg.optim_wrapper.optimizer.lr == 3e-4
    assert s.describe() == ('effective total batch 2 (2 per process x 1 process); '
                            'lr 3.000e-04 (not scaled) = 3.000e-04')


def test_config_auto_scale_lr_enable_means_linear():
    cfg = load_config(RECIPE, {'auto_scale_lr.enable': True})
    s = apply_batch_and_lr(cfg, batch_size=4, world_size=8)
    assert s.rule == 'linear' and cfg.optim_wrapper.optimizer.lr == pytest.approx(2e-4)


@pytest.mark.parametrize('kwargs,match', [
    (dict(batch_size=0), '--batch-size must be positive, got 0'),
    (dict(lr=-1.0), '--lr must be positive, got -1.0'),
    (dict(rule='cubic'), "--auto-scale-lr 'cubic'")])
def test_bad_values_name_themselves(kwargs, match):
    with pytest.raises(ValueError, match=match):
        apply_batch_and_lr(load_config(RECIPE), **kwargs)


def test_param_groups_keep_the_backbone_multiplier():
    """The real optimizer built from the scaled config: head lr and backbone lr x0.1."""
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    register_all_modules()
    import projects.dino_dinov2  # noqa: F401
    cfg = load_config(SYNTHETIC_CONFIG, {
        'optim_wrapper.paramwise_cfg.custom_keys.backbone.lr_mult': 0.1,
        'model.backbone.model_kwargs.depth': 1})
    apply_batch_and_lr(cfg, batch_size=8, lr=1e-4, rule='sqrt', world_size=1)  # base 4
    model = MODELS.build(cfg.model)
    wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    lrs = param_group_lrs(wrapper.optimizer, model.named_parameters())
    head = 1e-4 * math.sqrt(2)
    assert list(lrs) == pytest.approx([head * 0.1, head], rel=1e-12)
    assert lrs[min(lrs)][1] == ['backbone']
    assert 'backbone' not in lrs[max(lrs)][1] and 'bbox_head' in lrs[max(lrs)][1]
    n_backbone = sum(1 for n, _ in model.named_parameters() if n.startswith('backbone.'))
    assert lrs[min(lrs)][0] == n_backbone
    assert isinstance(next(iter(model.parameters())), torch.nn.Parameter)


def test_describe_without_lr():
    assert BatchLr(4, 2, 16, float('nan')).describe() == (
        'effective total batch 8 (4 per process x 2 processes)')
