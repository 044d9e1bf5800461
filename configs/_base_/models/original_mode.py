# The original's way of running the same model (docs/benchmarks.md): pure-PyTorch
# deformable attention on every device, explicit attention in the ViT, the frozen ViT
# inside autograd, per-image-and-layer Hungarian matching with mmdet's stock head and
# assigner, no compile, no checkpointing. Same parameters and state-dict keys: checkpoints
# load in both modes. Use as `model = {{_base_.original_mode}}` in a config that also
# inherits a model.
original_mode = dict(
    deform_attn_impl='pytorch',
    data_preprocessor=dict(non_blocking=False),
    checkpoint_encoder=False,
    checkpoint_decoder=False,
    backbone=dict(frozen_no_grad=False, fused_attn=False, compile=False),
    bbox_head=dict(type='DINOHead'),
    train_cfg=dict(assigner=dict(type='HungarianAssigner')))
