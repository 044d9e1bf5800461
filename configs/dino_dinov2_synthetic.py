# The embedded default: DINO on a tiny ViT trained from scratch on the synthetic shapes
# (data/synthetic, made by `python -m projects.dino_dinov2.datasets`). Small enough to
# train on 2 CPU cores in minutes: 4-block ViT (dim 192, patch 16), 2+2 DINO layers,
# 50 queries, 20 denoising queries, FFN 512, 128 px images.
_base_ = [
    './_base_/models/dino_dinov2_s.py', './_base_/datasets/synthetic_detection.py',
    './_base_/schedules/schedule_12e.py', './_base_/default_runtime.py'
]
embed_dim = 192
model = dict(
    num_queries=50,
    backbone=dict(
        model_name='vit_small_patch14_dinov2',
        pretrained=False,  # nothing can be downloaded: trained from scratch
        frozen=False,
        img_size=128,
        model_kwargs=dict(depth=4, embed_dim=embed_dim, num_heads=3)),
    neck=[
        dict(type='SimpleFeaturePyramid', in_channels=embed_dim, out_channels=256,
             scale_factors=(2.0, 1.0, 0.5), top_block=True),
        dict(type='ChannelMapper', in_channels=[256, 256, 256, 256], kernel_size=1,
             out_channels=256, act_cfg=None, norm_cfg=dict(type='GN', num_groups=32),
             bias=True, num_outs=4),  # bias before GN, as detrex's ChannelMapper
    ],
    encoder=dict(num_layers=2, layer_cfg=dict(ffn_cfg=dict(feedforward_channels=512))),
    decoder=dict(num_layers=2, layer_cfg=dict(ffn_cfg=dict(feedforward_channels=512))),
    bbox_head=dict(num_classes=3),
    dn_cfg=dict(group_cfg=dict(num_dn_queries=20)),
    test_cfg=dict(max_per_img=50))

# The backbone and the pyramid learn from scratch here, so they get the full lr.
optim_wrapper = dict(
    optimizer=dict(lr=2e-4),
    paramwise_cfg=dict(custom_keys={'backbone': dict(lr_mult=1.0),
                                    'neck.0': dict(lr_mult=1.0)}))
# Epoch-based (passes over 256 images), unlike the recipe's iteration schedule.
max_epochs = 12
train_cfg = dict(_delete_=True, type='ResumableEpochBasedTrainLoop',
                 max_epochs=max_epochs, val_interval=2)
param_scheduler = [
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True, milestones=[10],
         gamma=0.1)
]
default_hooks = dict(
    logger=dict(interval=16),
    checkpoint=dict(by_epoch=True, interval=2, max_keep_ckpts=2, save_best='coco/bbox_mAP',
                    rule='greater'))
log_processor = dict(window_size=16, by_epoch=True)
auto_scale_lr = dict(base_batch_size=4)
randomness = dict(seed=0)  # the demo gives the same curve on the same machine
