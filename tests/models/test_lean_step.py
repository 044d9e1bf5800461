"""The lean training step computes what mmdet's step computes, with the host's share cut.

Equality: one step of the same weights and batch (same denoising noise) through the lean
paths and through mmdet's (``analysis/step_equality.py``): losses, Hungarian assignments
and gradients, float32 on the CPU, for the synthetic config and for the recipe
architecture (6+6 layers, 900 queries, 100 denoising queries, 80 classes) made small.
Ceilings: the host profile of the recipe architecture (``tools/benchmark.py
--host-profile``) keeps synchronisations, ATen ops and optimizer groups under the levels
reached, so a regression fails here.
"""
import copy

import pytest
import torch

from helpers import REPO, SYNTHETIC_CONFIG
from projects.dino_dinov2.analysis import host_profile as hp
from projects.dino_dinov2.analysis import step_equality as se
from projects.dino_dinov2.analysis.benchmark import Variant, load_variant_config

RECIPE_S = f'{REPO}/configs/dino_dinov2_s_12ep.py'
SMALL_BACKBONE = {'model.backbone.model_kwargs.depth': 1}


def _check_equal(result):
    assert result['loss_keys_equal'], result
    assert result['loss_max_rel'] <= 1e-5, result
    assert result['same_assignments'] and result['assignments'] > 0, result
    assert not result['grads_missing'] and result['grads_compared'] > 100, result
    assert result['grad_max_rel'] <= 1e-5, result


@pytest.mark.parametrize('sizes', [[(96, 128), (128, 96)], [(96, 128), (96, 128)]],
                         ids=['padded', 'same-size'])
def test_synthetic_step_equals_mmdet_step(sizes):
    cfg = load_variant_config(Variant(SYNTHETIC_CONFIG))
    data = se.batch(sizes, cfg.model.bbox_head.num_classes, [9, 12])
    result = se.compare_step(cfg, data)
    assert result['num_losses'] == 3 * (2 + 1 + 2) + 1  # 2 layers, enc, 2 dn layers; total
    _check_equal(result)


def test_recipe_architecture_step_equals_mmdet_step():
    cfg = load_variant_config(Variant(RECIPE_S, SMALL_BACKBONE))
    assert cfg.model.num_queries == 900 and cfg.model.bbox_head.num_classes == 80
    data = se.batch([(224, 256), (256, 224)], 80, [9, 12])
    result = se.compare_step(cfg, data)
    assert result['num_losses'] == 3 * (6 + 1 + 6) + 1
    assert result['assignments'] == 7 * 2  # 6 decoder layers + encoder, 2 images
    _check_equal(result)


def test_empty_image_in_batch_equals_mmdet_step():
    """An image without boxes: no matches, no denoising rows of its own."""
    cfg = load_variant_config(Variant(SYNTHETIC_CONFIG))
    data = se.batch([(96, 128), (128, 96)], cfg.model.bbox_head.num_classes, [5, 0])
    _check_equal(se.compare_step(cfg, data))


@pytest.fixture(scope='module')
def recipe_profiles():
    rows = {}
    for mode, options in (('mmdet', hp.MMDET_STEP), ('lean', {})):
        cfg = load_variant_config(Variant(RECIPE_S, dict(SMALL_BACKBONE, **options)))
        rows[mode] = hp.profile_step(cfg, image_size=(224, 256), num_gt=(9, 12))
    return rows


def test_host_profile_ceilings(recipe_profiles):
    """The three goals of the lean step, as ceilings (measured: 2.05 syncs per step,
    3 groups; ops: see docs/benchmarks.md#host-share-of-a-training-step)."""
    lean, mmdet = recipe_profiles['lean'], recipe_profiles['mmdet']
    # synchronisations outside the optimizer: the matching's one copy to the host, the
    # label noise's nonzero, a twentieth of a log flush
    assert lean['syncs_per_step_outside_optimizer'] <= 3, lean['syncs']
    assert mmdet['syncs_per_step_outside_optimizer'] > 100  # what it was
    assert lean['param_groups'] <= 8 and mmdet['param_groups'] > 300
    assert lean['params_updated'] == mmdet['params_updated']
    # ops: launching ones down >= 3x, all ATen ops (views too) >= 2x
    assert lean['launches_per_step'] * 3 <= mmdet['launches_per_step'], (lean, mmdet)
    assert lean['ops_per_step'] * 2 <= mmdet['ops_per_step'], (lean, mmdet)
    assert lean['ops_per_step'] <= 6500 and lean['launches_per_step'] <= 3100
    assert lean['ops']['optimizer'] <= 40  # one fused update per group
    assert lean['kernel_standins'] > 0 and lean['pinned_copies'] >= 3


def test_host_profile_table(recipe_profiles):
    text = hp.table({'mmdet step': recipe_profiles['mmdet'],
                     'lean step': recipe_profiles['lean']})
    assert '| **optimizer param groups** | **333** | **3** |' in text
    assert '**synchronising ops per step, outside the optimizer**' in text
    assert 'ATen ops that launch work' in text


def test_original_mode_keeps_mmdet_paths():
    """The original-equivalent configs run mmdet's step as written (the baseline of the
    GPU tables)."""
    from mmdet.registry import MODELS
    from mmdet.models.layers.transformer.dino_layers import CdnQueryGenerator
    from mmdet.models.data_preprocessors import DetDataPreprocessor

    import projects.dino_dinov2  # noqa: F401
    cfg = load_variant_config(Variant(f'{REPO}/configs/dino_dinov2_synthetic_original.py'))
    model = MODELS.build(cfg.model)
    assert model.lean_step is False and model.bbox_head.batched_losses is False
    assert type(model.dn_query_generator) is CdnQueryGenerator
    assert type(model.data_preprocessor) is DetDataPreprocessor
    lean = MODELS.build(load_variant_config(Variant(SYNTHETIC_CONFIG)).model)
    assert lean.lean_step and lean.bbox_head.batched_losses
    assert type(lean.dn_query_generator).__name__ == 'LeanCdnQueryGenerator'


def test_batched_losses_refuses_other_losses():
    from mmdet.registry import MODELS

    from projects.dino_dinov2.errors import ConfigError
    cfg = load_variant_config(Variant(SYNTHETIC_CONFIG))
    cfg.model.bbox_head.loss_bbox = dict(type='SmoothL1Loss', loss_weight=5.0)
    with pytest.raises(ConfigError, match='batched_losses=True: loss_bbox is SmoothL1Loss'):
        MODELS.build(copy.deepcopy(cfg.model))
    cfg.model.bbox_head.batched_losses = False
    MODELS.build(copy.deepcopy(cfg.model))


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
