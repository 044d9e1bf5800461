"""LeanOptimWrapperConstructor: the same per-parameter settings in merged groups and a fused
update; LeanOptimWrapper: the same clipping with the gradient norm left on the device; an
optimizer state saved with mmengine's unmerged groups resumes into the merged ones."""
import copy

import torch
from mmengine.optim import build_optim_wrapper

from helpers import SYNTHETIC_CONFIG, init_weights_quietly
from analysis_tools.benchmark import (Variant, load_variant_config,
                                                     quiet_mmengine)
from projects.dino_dinov2.engine import LeanOptimWrapper


def _model_and_cfg():
    from mmdet.registry import MODELS
    cfg = load_variant_config(Variant(SYNTHETIC_CONFIG))
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    init_weights_quietly(model)  # DINO's level_embed starts as uninitialised memory
    return model, cfg


def _settings(optimizer):
    """Per parameter: every group setting but 'params'."""
    out = {}
    for group in optimizer.param_groups:
        for p in group['params']:
            out[id(p)] = {k: v for k, v in group.items()
                          if k not in ('params', 'fused', 'foreach')}
    return out


def _wrappers():
    model, cfg = _model_and_cfg()
    assert cfg.optim_wrapper.constructor == 'LeanOptimWrapperConstructor'
    with quiet_mmengine():
        lean = build_optim_wrapper(model, copy.deepcopy(cfg.optim_wrapper))
        stock_cfg = copy.deepcopy(cfg.optim_wrapper)
        stock_cfg.constructor = 'DefaultOptimWrapperConstructor'
        stock_cfg.type = 'OptimWrapper'
        stock = build_optim_wrapper(model, stock_cfg)
    return model, lean, stock


def test_groups_merged_with_each_parameters_settings():
    model, lean, stock = _wrappers()
    assert len(stock.optimizer.param_groups) > 100
    assert len(lean.optimizer.param_groups) <= 4
    assert _settings(lean.optimizer) == _settings(stock.optimizer)
    lrs = sorted({g['lr'] for g in lean.optimizer.param_groups})
    assert len(lrs) >= 1 and all(g.get('fused') for g in lean.optimizer.param_groups)
    assert isinstance(lean, LeanOptimWrapper)


def test_same_update_and_deferred_norm():
    model, lean, stock = _wrappers()
    params = [p for p in model.parameters() if p.requires_grad]
    start = [p.detach().clone() for p in params]
    torch.manual_seed(1)
    grads = [torch.randn_like(p) for p in params]

    def step(wrapper):
        for p, s, g in zip(params, start, grads):
            p.data.copy_(s)
            p.grad = g.clone()
        wrapper.step()
        return [p.detach().clone() for p in params]
    after_stock = step(stock)
    after_lean = step(lean)
    for a, b in zip(after_stock, after_lean):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7)
    norm = lean.pop_grad_norm()
    assert lean.pop_grad_norm() is None  # taken once
    expected = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g)
                                                     for g in grads]))
    assert torch.is_tensor(norm) and torch.allclose(norm, expected, rtol=1e-5)


def test_unmerged_optimizer_state_resumes_into_merged_groups():
    model, lean, stock = _wrappers()
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.grad = torch.ones_like(p)
    stock.step()
    saved = copy.deepcopy(stock.state_dict())
    lean.load_state_dict(saved)  # mmengine's layout (one group per parameter)
    for p in params:
        assert torch.equal(lean.optimizer.state[p]['exp_avg'],
                           stock.optimizer.state[p]['exp_avg'])
    assert _settings(lean.optimizer) == _settings(stock.optimizer)
    assert all(g['fused'] for g in lean.optimizer.param_groups)
    lean.load_state_dict(copy.deepcopy(lean.state_dict()))  # its own layout
