"""Parameters, FLOPs and forward time of a config's backbone (``tools/backbone_cost.py``).

FLOPs are counted by mmengine's ``FlopAnalyzer`` (fvcore's counter: one multiply-add is one
FLOP, the convention of the ViT and DETR papers' GFLOPs) on one forward of the backbone at
the given image size; the forward time is the median of timed runs after warm-up.
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
import torch


@dataclass
class ModelCost:
    config: str
    backbone: str  # timm model name
    backbone_params_m: float
    detector_params_m: float
    trainable_params_m: float
    image_size: Tuple[int, int]
    backbone_gflops: float
    forward_s: Optional[float]
    device: str


def _count(params) -> float:
    return sum(p.numel() for p in params) / 1e6


def measure(config: str, image_size: Tuple[int, int] = (800, 1333), iters: int = 3,
            warmup: int = 1, device: str = 'cpu',
            cfg_options: Optional[Dict] = None) -> ModelCost:
    from mmengine.analysis import FlopAnalyzer
    from mmengine.registry import init_default_scope

    from mmdet.registry import MODELS
    from projects.dino_dinov2.cli.config_setup import load_config

    from .benchmark import quiet_mmengine
    cfg = load_config(config, cfg_options)
    init_default_scope(cfg.get('default_scope', 'mmdet'))
    model_cfg = copy.deepcopy(cfg.model)
    model_cfg.backbone.pretrained = False  # costs do not depend on weight values
    with quiet_mmengine():
        model = MODELS.build(model_cfg)
    backbone = model.backbone.to(device).eval()
    x = torch.randn(1, 3, *image_size, device=device)
    with torch.no_grad():
        analyzer = FlopAnalyzer(backbone, (x, ))
        analyzer.unsupported_ops_warnings(False)
        analyzer.uncalled_modules_warnings(False)
        gflops = analyzer.total() / 1e9
        times = []
        for i in range(warmup + iters):
            if device.startswith('cuda'):
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            backbone(x)
            if device.startswith('cuda'):
                torch.cuda.synchronize()
            if i >= warmup:
                times.append(time.perf_counter() - t0)
    return ModelCost(
        config=config, backbone=str(cfg.model.backbone.get('model_name')),
        backbone_params_m=_count(backbone.parameters()),
        detector_params_m=_count(model.parameters()),
        trainable_params_m=_count(p for p in model.parameters() if p.requires_grad),
        image_size=tuple(image_size), backbone_gflops=gflops,
        forward_s=float(np.median(times)) if times else None, device=device)


def gflops_text(gflops: float) -> str:
    """GFLOPs to three significant figures (a small model is not '0 GFLOPs')."""
    return f'{gflops:.0f}' if gflops >= 100 else f'{gflops:.3g}'


def cost_table(costs: Sequence[ModelCost]) -> str:
    h, w = costs[0].image_size if costs else (0, 0)
    device = costs[0].device if costs else '-'
    lines = [f'| Config | Backbone | Backbone params (M) | Detector params (M) | Trained params '
             f'(M) | Backbone GFLOPs at {h}x{w} | Backbone forward s ({device}, batch 1) |',
             '| --- | --- | --- | --- | --- | --- | --- |']
    for c in costs:
        name = c.config.rsplit('/', 1)[-1]
        fwd = '-' if c.forward_s is None else f'{c.forward_s:.2f}'
        lines.append(f'| `{name}` | `{c.backbone}` | {c.backbone_params_m:.1f} | '
                     f'{c.detector_params_m:.1f} | {c.trainable_params_m:.1f} | '
                     f'{gflops_text(c.backbone_gflops)} | {fwd} |')
    return '\n'.join(lines)
