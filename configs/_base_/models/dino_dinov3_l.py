# The ViT-B model with a DINOv3 ViT-L/16 backbone (embed dim 1024).
_base_ = './dino_dinov2_b.py'
embed_dim = 1024
model = dict(
    backbone=dict(type='TimmDinov3', model_name='vit_large_patch16_dinov3.lvd1689m'),
    neck=[
        dict(type='SimpleFeaturePyramid', in_channels=embed_dim, out_channels=256,
             scale_factors=(2.0, 1.0, 0.5), top_block=True),
        dict(type='ChannelMapper', in_channels=[256, 256, 256, 256], kernel_size=1,
             out_channels=256, act_cfg=None, norm_cfg=dict(type='GN', num_groups=32),
             bias=True, num_outs=4),  # bias before GN, as detrex's ChannelMapper
    ])
