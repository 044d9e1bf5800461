"""The whole detector: its step against stock mmdet's, the host's share of it, activation
checkpointing, bfloat16, prediction, and the configs that build it.

Equality: one step of the same weights and batch (same denoising noise) through this
project's classes and through mmdet's own (``tools/analysis_tools/step_equality.py``):
losses, Hungarian assignments and gradients, float32 on the CPU, for the synthetic config
and for the recipe architecture (6+6 layers, 900 queries, 100 denoising queries, 80
classes) made small. Host profile: the recipe architecture's step keeps its
synchronisations, ATen ops and optimizer groups under ceilings set against stock mmdet's
step measured in the same test.
"""
import copy
import os.path as osp

import pytest
import torch
from mmengine.config import Config
from mmengine.optim import build_optim_wrapper

from analysis_tools import host_profile as hp
from analysis_tools import step_equality as se
from analysis_tools.benchmark import Variant, load_variant_config
from helpers import REPO, SYNTHETIC_CONFIG
from tiny_models import build_detector, loss_and_grads, make_batch

RECIPE_S = f'{REPO}/configs/dino_dinov2_s_12ep.py'
SMALL_BACKBONE = {'model.backbone.model_kwargs.depth': 1}
FROZEN = dict(backbone=dict(frozen=True))  # the recipe's frozen ViT


@pytest.mark.parametrize('config, sizes, num_gt', [
    (SYNTHETIC_CONFIG, [(96, 128), (128, 96)], [9, 12]),   # padded and masked
    (SYNTHETIC_CONFIG, [(96, 128), (96, 128)], [9, 12]),   # same size: no mask
    (SYNTHETIC_CONFIG, [(96, 128), (128, 96)], [5, 0]),    # an image without boxes
    (RECIPE_S, [(208, 224), (224, 208)], [9, 12]),         # the recipe architecture
], ids=['padded', 'same-size', 'empty-image', 'recipe'])
def test_step_equals_stock_mmdet_step(config, sizes, num_gt):
    cfg = load_variant_config(Variant(config, SMALL_BACKBONE if config == RECIPE_S else {}))
    classes = cfg.model.bbox_head.num_classes
    layers = cfg.model.decoder.num_layers
    result = se.compare_step(cfg, se.batch(sizes, classes, num_gt))
    assert result['loss_keys_equal'], result
    assert result['num_losses'] == 3 * (2 * layers + 1) + 1  # layers, enc, dn layers; total
    assert result['loss_max_rel'] <= 1e-5, result
    assert result['same_assignments'], result
    assert result['assignments'] == (layers + 1) * len(sizes)  # decoder layers + encoder
    assert not result['grads_missing'] and result['grads_compared'] > 100, result
    assert result['grad_max_rel'] <= 1e-5, result


def test_host_profile_against_stock_mmdet_step():
    """The recipe architecture's step (tools/benchmark.py --host-profile) against stock
    mmdet's, measured here (docs/benchmarks.md#host-share-of-a-training-step): at most 3
    synchronisations outside the optimizer (the matching's one copy to the host, the label
    noise's nonzero, a twentieth of a log flush), >= 3x fewer launching ops, >= 2x fewer
    ops, the optimizer in a few fused groups."""
    cfg = load_variant_config(Variant(RECIPE_S, SMALL_BACKBONE))
    rows = {name: hp.profile_step(c, image_size=(208, 224), num_gt=(9, 12))
            for name, c in (('mmdet step', se.stock_mmdet(cfg)), ('this step', cfg))}
    ours, stock = rows['this step'], rows['mmdet step']
    assert ours['syncs_per_step_outside_optimizer'] <= 3, ours['syncs']
    assert stock['syncs_per_step_outside_optimizer'] > 100  # what it is
    assert ours['param_groups'] <= 8 < stock['param_groups']
    assert ours['params_updated'] == stock['params_updated']
    assert ours['launches_per_step'] * 3 <= stock['launches_per_step'], (ours, stock)
    assert ours['ops_per_step'] * 2 <= stock['ops_per_step'], (ours, stock)
    assert ours['ops']['optimizer'] * 50 <= stock['ops']['optimizer']  # fused, per group
    assert ours['kernel_standins'] > 0 and ours['pinned_copies'] >= 3
    text = hp.table(rows)
    assert '**synchronising ops per step, outside the optimizer**' in text


def test_original_configs_are_stock_mmdet_with_the_recipe():
    """The original-equivalent configs build mmdet's own classes (the baseline is stock
    mmdet, not flags on this project's), with everything else the recipe's."""
    from mmdet.models.data_preprocessors import DetDataPreprocessor
    from mmdet.models.dense_heads import DINOHead
    from mmdet.models.detectors import DINO
    from mmdet.models.layers.transformer.dino_layers import CdnQueryGenerator
    from mmdet.models.task_modules.assigners import HungarianAssigner
    from mmcv.ops import MultiScaleDeformableAttention

    from projects.dino_dinov2.models import FastDINO
    stock = build_detector(osp.join(REPO, 'configs', 'dino_dinov2_synthetic_original.py'))
    for part, cls in ((stock, DINO), (stock.bbox_head, DINOHead),
                      (stock.bbox_head.assigner, HungarianAssigner),
                      (stock.dn_query_generator, CdnQueryGenerator),
                      (stock.data_preprocessor, DetDataPreprocessor),
                      (stock.encoder.layers[0].self_attn, MultiScaleDeformableAttention)):
        assert type(part) is cls
    ours = build_detector()
    assert isinstance(ours, FastDINO) and ours.state_dict().keys() == stock.state_dict().keys()
    for name in ('s', 'b'):
        cfg = Config.fromfile(f'{REPO}/configs/dino_dinov2_{name}_12ep_original.py')
        recipe = Config.fromfile(f'{REPO}/configs/dino_dinov2_{name}_12ep.py')
        for key in ('num_queries', 'backbone', 'neck', 'encoder', 'decoder', 'dn_cfg',
                    'positional_encoding', 'test_cfg'):
            assert cfg.model[key] == recipe.model[key], key
        assert cfg.model.train_cfg.assigner.match_costs == \
            recipe.model.train_cfg.assigner.match_costs
        assert cfg.train_dataloader == recipe.train_dataloader
        assert cfg.amp_dtype == 'float16'  # --amp: the original's float16 + GradScaler


def test_activation_checkpointing_same_gradients_less_saved():
    plain = build_detector(**FROZEN)
    ckpt = build_detector(checkpoint_encoder=True, checkpoint_decoder=True, **FROZEN)
    assert all(layer.checkpoint for layer in [*ckpt.encoder.layers, *ckpt.decoder.layers])
    assert not any(getattr(m, 'checkpoint', False) is True for m in plain.modules())
    ckpt.load_state_dict(plain.state_dict())  # same keys
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
    for k in l_plain:
        torch.testing.assert_close(l_ckpt[k], l_plain[k], rtol=0, atol=0, msg=k)
    for k in g_plain:
        torch.testing.assert_close(g_ckpt[k], g_plain[k], rtol=1e-5, atol=1e-7, msg=k)
    assert bytes_ckpt < 0.8 * bytes_plain, (bytes_ckpt, bytes_plain)
    # a copy (EMA's deepcopy) checkpoints too
    assert copy.deepcopy(ckpt).encoder.layers[0].checkpoint


def test_deform_attn_impl_checked():
    from projects.dino_dinov2.errors import ConfigError
    with pytest.raises(ConfigError, match='deform_attn_impl must be one of'):
        build_detector(deform_attn_impl='cuda')


def test_bf16_autocast_training_step_cpu():
    cfg = Config.fromfile(SYNTHETIC_CONFIG)
    cfg.optim_wrapper.type = 'AutoAmpOptimWrapper'
    model = build_detector()
    model.train()
    optim = build_optim_wrapper(model, copy.deepcopy(cfg.optim_wrapper))
    assert optim.cast_dtype == torch.bfloat16
    batch = make_batch(model)
    with optim.optim_context(model):
        losses = model.loss(batch['inputs'], batch['data_samples'])
        assert torch.is_autocast_enabled('cpu')
    loss, _ = model.parse_losses(losses)
    assert torch.isfinite(loss)
    w = model.bbox_head.cls_branches[0].weight.detach().clone()
    optim.update_params(loss)
    assert not torch.equal(w, model.bbox_head.cls_branches[0].weight)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_predict_returns_boxes():
    model = build_detector()
    model.eval()
    with torch.no_grad():
        batch = make_batch(model, training=False)
        results = model.predict(batch['inputs'], batch['data_samples'])
    assert len(results) == 2
    inst = results[0].pred_instances
    assert 0 < len(inst.bboxes) <= 50 and inst.bboxes.shape[1] == 4


@pytest.mark.parametrize('name', ['dino_dinov2_b_12ep.py', 'dino_dinov2_s_50ep.py'])
def test_recipe_configs_build_the_recipe(name):
    from projects.dino_dinov2.cli import build_target_model, load_config
    cfg = load_config(osp.join(REPO, 'configs', name), SMALL_BACKBONE)
    model = build_target_model(cfg)
    vit = model.backbone.vit
    assert model.backbone.fully_frozen and vit.patch_embed.proj.kernel_size == (16, 16)
    assert vit.embed_dim == (768 if '_b_' in name else 384)
    assert model.num_queries == 900 and model.bbox_head.num_classes == 80
    assert len(model.encoder.layers) == 6 and len(model.decoder.layers) == 6
    assert {m.impl for m in model.modules() if hasattr(m, 'impl')} == {'auto'}
    assert cfg.optim_wrapper.paramwise_cfg.custom_keys.backbone.lr_mult == 0.1
    assert cfg.param_scheduler[0].milestones == ([82500] if '12ep' in name else [300000])
    for loader in (cfg.train_dataloader, cfg.val_dataloader):
        assert loader.num_workers >= 4 and loader.pin_memory and loader.persistent_workers


def test_dn_mask_equals_mmdet():
    from mmdet.models.layers.transformer.dino_layers import CdnQueryGenerator

    from projects.dino_dinov2.models import LeanCdnQueryGenerator
    kwargs = dict(num_classes=3, embed_dims=16, num_matching_queries=7,
                  label_noise_scale=0.5, box_noise_scale=1.0,
                  group_cfg=dict(dynamic=True, num_dn_queries=20))
    stock, lean = CdnQueryGenerator(**kwargs), LeanCdnQueryGenerator(**kwargs)
    for max_num_target, groups in [(3, 3), (1, 10), (5, 1)]:
        assert torch.equal(stock.generate_dn_mask(max_num_target, groups, 'cpu'),
                           lean.generate_dn_mask(max_num_target, groups, 'cpu'))
