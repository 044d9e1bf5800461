# The ViT-S recipe architecture (configs/dino_dinov2_s_12ep.py: 12 ViT blocks of dim 384,
# patch 16, the simple feature pyramid, 6+6 DINO layers, FFN 2048, 900 queries, 100
# denoising queries, top 300) trained from scratch on the synthetic shapes at 224 px: the
# real-architecture model the INT8 accuracy is measured on (docs/deploy.md#int8), since no
# published weights can be downloaded here. 224 px is the smallest usual size whose four
# levels hold the 900 queries' proposals (28^2 + 14^2 + 7^2 + 4^2 = 1045 tokens; 128 px has
# 340). Everything trains (the ViT has no weights to start from) at the demo's lr.
#   python -m projects.dino_dinov2.datasets --out data/synthetic
#   python tools/train.py tools/analysis_tools/recipe_synthetic.py --work-dir WORK_DIR
_base_ = [
    '../../configs/_base_/models/dino_dinov2_s.py',
    '../../configs/_base_/datasets/synthetic_detection.py',
    '../../configs/_base_/schedules/schedule_12e.py',
    '../../configs/_base_/default_runtime.py'
]
size = 224
model = dict(
    backbone=dict(pretrained=False, frozen=False, img_size=size),
    bbox_head=dict(num_classes=3))

train_pipeline = [
    dict(type='CheckedLoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='Resize', scale=(size, size), keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs')
]
test_pipeline = [
    dict(type='CheckedLoadImageFromFile'),
    dict(type='Resize', scale=(size, size), keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor'))
]
train_dataloader = dict(dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(dataset=dict(pipeline=test_pipeline))
test_dataloader = dict(dataset=dict(pipeline=[dict(type='LoadImageFromFile')] +
                                    test_pipeline[1:]))

optim_wrapper = dict(
    optimizer=dict(lr=2e-4),
    paramwise_cfg=dict(custom_keys={'backbone': dict(lr_mult=1.0),
                                    'neck.0': dict(lr_mult=1.0)}))
max_epochs = 8
train_cfg = dict(_delete_=True, type='ResumableEpochBasedTrainLoop',
                 max_epochs=max_epochs, val_interval=1)
param_scheduler = [
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True, milestones=[7],
         gamma=0.1)
]
default_hooks = dict(
    logger=dict(interval=8),
    checkpoint=dict(by_epoch=True, interval=1, max_keep_ckpts=2, save_best='coco/bbox_mAP',
                    rule='greater'))
log_processor = dict(window_size=8, by_epoch=True)
auto_scale_lr = dict(base_batch_size=4)
randomness = dict(seed=0)
