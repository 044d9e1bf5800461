"""The synthetic config's tiny DINO (4-block ViT dim 192, 2+2 layers, 50 queries) for the
model tests, a batch for it, and one step's losses and gradients."""
import torch
from mmdet.registry import MODELS
from mmdet.testing import demo_mm_inputs
from mmengine.config import Config
from mmengine.registry import init_default_scope

import projects.dino_dinov2  # noqa: F401
from helpers import SYNTHETIC_CONFIG, init_weights_quietly


def build_detector(path: str = SYNTHETIC_CONFIG, seed: int = 0, **model_options):
    """The detector of a config file (``model_options`` merged into ``model``)."""
    init_default_scope('mmdet')
    cfg = Config.fromfile(path)
    cfg.model.update(model_options)  # nested dicts merge (addict)
    torch.manual_seed(seed)
    return init_weights_quietly(MODELS.build(cfg.model))


def make_batch(model, sizes=((96, 128), (128, 96)), num_items=(3, 2), training=True,
               seed=0):
    """A preprocessed batch of random images with random boxes of 3 classes."""
    torch.manual_seed(seed)
    data = demo_mm_inputs(batch_size=len(sizes), image_shapes=[(3, h, w) for h, w in sizes],
                          num_items=list(num_items), num_classes=3, with_mask=False)
    return model.data_preprocessor(data, training=training)


def loss_and_grads(model, batch, seed=1):
    """Training losses of ``batch`` and the gradients they give (name -> tensor).

    ``seed`` fixes the denoising queries' random noise, so two models see the same.
    """
    model.train()
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)
    losses = model.loss(batch['inputs'], batch['data_samples'])
    loss, _ = model.parse_losses(losses)
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()
             if p.grad is not None}
    return {k: v.detach() for k, v in losses.items()}, grads
