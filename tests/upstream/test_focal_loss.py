"""Float32FocalLoss: mmdet's FocalLoss, in float32 whatever the logits' dtype."""
import pytest
import torch
from mmdet.models.losses import FocalLoss
from mmdet.registry import MODELS

import projects.dino_dinov2  # noqa: F401  (registers the project's modules)

DEVICES = ['cpu'] + (['cuda'] if torch.cuda.is_available() else [])
ARGS = dict(use_sigmoid=True, gamma=2.0, alpha=0.25, loss_weight=1.0)


@pytest.mark.parametrize('device', DEVICES)
def test_float32_focal_loss(device):
    torch.manual_seed(0)
    logits = torch.randn(50, 4, device=device)
    labels = torch.randint(0, 5, (50, ), device=device)  # 4: background
    ours, stock = MODELS.build(dict(type='Float32FocalLoss', **ARGS)), FocalLoss(**ARGS)
    # float32 logits: the same numbers as mmdet's loss
    assert torch.equal(ours(logits, labels, avg_factor=7.0), stock(logits, labels,
                                                                   avg_factor=7.0))
    # bf16 logits (what AMP hands over): computed in float32, gradient in bf16
    half = logits.bfloat16().requires_grad_()
    loss = ours(half, labels, avg_factor=7.0)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, stock(half.detach().float(), labels, avg_factor=7.0))
    loss.backward()
    assert half.grad.dtype == torch.bfloat16 and torch.isfinite(half.grad).all()
