# COCO 2017 in mmdet's layout (data/coco/{annotations,train2017,val2017}) with DETR's
# augmentation: flip, multi-scale resize (short 480..800 step 32, long <= 1333) or the
# resize-crop-resize branch. Batch 2 per GPU: 8 GPUs give the recipe's total batch 16 (the
# original ran 4 per GPU on 4 GPUs; --batch-size 4 on 4 GPUs is the same total).
# Loading keeps the GPU fed: 4 decoding workers per GPU (a fast step needs ~15 images/s),
# kept alive across epochs, batches in pinned memory (asynchronous host-to-GPU copies).
dataset_type = 'CheckedCocoDataset'  # CocoDataset + checks (docs/robustness.md)
data_root = 'data/coco/'
backend_args = None

_scales = [(s, 1333) for s in range(480, 801, 32)]
# Resizing with Pillow, as detectron2 (the original): the same pixels as the original's
# pipeline (tools/parity: cv2's bilinear differs by 1 in 14% of the values; Pillow also
# antialiases when shrinking, cv2 does not). 8.6 ms against 0.6 ms per 640x480 -> 1067x800
# image, far from what a decoding worker has to spare. 'cv2' is mmdet's default.
resize_backend = 'pillow'
train_pipeline = [
    dict(type='CheckedLoadImageFromFile', backend_args=backend_args),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='RandomFlip', prob=0.5),
    dict(
        type='RandomChoice',
        transforms=[
            [dict(type='RandomChoiceResize', scales=_scales, keep_ratio=True,
                  backend=resize_backend)],
            [
                dict(type='RandomChoiceResize', scales=[(400, 4200), (500, 4200),
                                                        (600, 4200)], keep_ratio=True,
                     backend=resize_backend),
                dict(type='RandomCrop', crop_type='absolute_range', crop_size=(384, 600),
                     allow_negative_crop=True),
                dict(type='RandomChoiceResize', scales=_scales, keep_ratio=True,
                     backend=resize_backend)
            ]
        ]),
    dict(type='PackDetInputs')
]
test_pipeline = [
    dict(type='CheckedLoadImageFromFile', backend_args=backend_args),
    dict(type='Resize', scale=(1333, 800), keep_ratio=True, backend=resize_backend),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor'))
]

train_dataloader = dict(
    batch_size=2,
    num_workers=4,
    persistent_workers=True,
    pin_memory=True,
    sampler=dict(type='InfiniteSampler', shuffle=True),  # iteration-based, as detectron2's
    batch_sampler=dict(type='AspectRatioBatchSampler'),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        ann_file='annotations/instances_train2017.json',
        data_prefix=dict(img='train2017/'),
        # images without (non-crowd) boxes are dropped, as detectron2's filter_empty:
        # 117,266 of COCO's 118,287 train images remain
        filter_cfg=dict(filter_empty_gt=True),
        pipeline=train_pipeline,
        backend_args=backend_args))
val_dataloader = dict(
    batch_size=1,
    num_workers=4,
    persistent_workers=True,
    pin_memory=True,
    drop_last=False,
    sampler=dict(type='DefaultSampler', shuffle=False),
    dataset=dict(
        type=dataset_type,
        data_root=data_root,
        ann_file='annotations/instances_val2017.json',
        data_prefix=dict(img='val2017/'),
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
    ann_file=data_root + 'annotations/instances_val2017.json',
    metric='bbox',
    # COCO's standard maxDets: AP50, AP75, APs/m/l over the top 100 detections per image,
    # as detectron2's COCOEvaluator (mmdet's default 1000 counts all 300 outputs)
    proposal_nums=(1, 10, 100),
    format_only=False,
    backend_args=backend_args)
test_evaluator = val_evaluator
