# The project's synthetic COCO-format shapes (python -m projects.dino_dinov2.datasets
# writes data/synthetic/). 128 px images (other sizes are resized to fit 128 x 128);
# flip is the only augmentation.
dataset_type = 'CheckedCocoDataset'  # CocoDataset + checks (docs/robustness.md)
data_root = 'data/synthetic/'
backend_args = None
metainfo = dict(
    classes=('circle', 'square', 'triangle'),
    palette=[(220, 40, 40), (40, 170, 60), (40, 80, 220)])

train_pipeline = [
    dict(type='CheckedLoadImageFromFile', backend_args=backend_args),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='Resize', scale=(128, 128), keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs')
]
test_pipeline = [
    dict(type='CheckedLoadImageFromFile', backend_args=backend_args),
    dict(type='Resize', scale=(128, 128), keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor'))
]

train_dataloader = dict(
    batch_size=4,
    num_workers=0,
    persistent_workers=False,
    sampler=dict(type='DefaultSampler', shuffle=True),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        metainfo=metainfo,
        ann_file='annotations/instances_train.json',
        data_prefix=dict(img='train/'),
        filter_cfg=dict(filter_empty_gt=True),
        pipeline=train_pipeline,
        backend_args=backend_args))
val_dataloader = dict(
    batch_size=8,
    num_workers=0,
    persistent_workers=False,
    drop_last=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        metainfo=metainfo,
        ann_file='annotations/instances_val.json',
        data_prefix=dict(img='val/'),
        test_mode=True,
        pipeline=test_pipeline,
        backend_args=backend_args))
# the test set as mmdet's tools and DetInferencer expect it: mmcv's LoadImageFromFile (the
# inferencer swaps it for its own loader); this project's tools/test.py loads it checked
test_dataloader = dict(
    val_dataloader,
    dataset=dict(val_dataloader['dataset'],
                 pipeline=[dict(type='LoadImageFromFile', backend_args=backend_args)]
                 + test_pipeline[1:]))

val_evaluator = dict(
    type='CocoMetric',
    ann_file=data_root + 'annotations/instances_val.json',
    metric='bbox',
    proposal_nums=(1, 10, 100),  # COCO's standard maxDets (coco_detection.py)
    format_only=False,
    backend_args=backend_args)
test_evaluator = val_evaluator
