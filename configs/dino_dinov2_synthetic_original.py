# The synthetic config run the original's way (see dino_dinov2_b_12ep_original.py): the
# tiny model for comparing the two modes on a CPU or in tests.
_base_ = './dino_dinov2_synthetic.py'
model = dict(
    deform_attn_impl='pytorch',
    data_preprocessor=dict(non_blocking=False),
    checkpoint_encoder=False,
    checkpoint_decoder=False,
    backbone=dict(frozen_no_grad=False, fused_attn=False, compile=False),
    bbox_head=dict(type='DINOHead'),
    train_cfg=dict(assigner=dict(type='HungarianAssigner')))
