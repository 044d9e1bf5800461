# dino_dinov2_b_12ep as stock mmdet (configs/_base_/models/original_mode.py): the ViT-S
# original-equivalent config with the ViT-B backbone, as dino_dinov2_b_12ep.py differs from
# dino_dinov2_s_12ep.py. The baseline every speed-up is measured against (docs/benchmarks.md).
_base_ = ['./dino_dinov2_s_12ep_original.py']
embed_dim = 768
model = dict(
    backbone=dict(model_name='vit_base_patch14_dinov2.lvd142m'),
    neck=[
        dict(type='SimpleFeaturePyramid', in_channels=embed_dim, out_channels=256,
             scale_factors=(2.0, 1.0, 0.5), top_block=True),
        dict(type='ChannelMapper', in_channels=[256, 256, 256, 256], kernel_size=1,
             out_channels=256, act_cfg=None, norm_cfg=dict(type='GN', num_groups=32),
             bias=True, num_outs=4),  # bias before GN, as detrex's ChannelMapper
    ])
