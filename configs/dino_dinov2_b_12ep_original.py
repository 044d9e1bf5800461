# dino_dinov2_b_12ep run the original's way, the baseline every speed-up is measured
# against (docs/benchmarks.md): pure-PyTorch deformable attention on every device,
# explicit attention in the ViT, the frozen ViT inside autograd, per-image-and-layer
# Hungarian matching with mmdet's stock head and assigner, no compile, no checkpointing.
# Full precision by default (the schedule's OptimWrapper); --amp gives the "Mixed" row.
# Same parameters and state-dict keys as dino_dinov2_b_12ep: checkpoints load in both.
_base_ = './dino_dinov2_b_12ep.py'
model = dict(
    deform_attn_impl='pytorch',
    data_preprocessor=dict(non_blocking=False),
    checkpoint_encoder=False,
    checkpoint_decoder=False,
    backbone=dict(frozen_no_grad=False, fused_attn=False, compile=False),
    bbox_head=dict(type='DINOHead'),
    train_cfg=dict(assigner=dict(type='HungarianAssigner')))
