# DINO-4scale on a frozen DINOv2 ViT-B/16 with ViTDet's simple feature pyramid
# (../shared/docs/RECIPE.md "Model"). mmdet's DINO, DINOHead and CdnQueryGenerator built
# with this project's parts, the same model run without host round trips (the step-equality
# test holds it to mmdet's); the *_original.py configs are stock mmdet.
embed_dim = 768
model = dict(
    type='FastDINO',  # mmdet's DINO + the execution choices below
    # 'auto': Triton kernels on a GPU, PyTorch on the CPU; or 'triton', 'mmcv' (its CUDA
    # kernel), 'pytorch' (the original's). The log says which ran.
    deform_attn_impl='auto',
    checkpoint_encoder=False,  # activation checkpointing: memory for ~1/3 more compute
    checkpoint_decoder=False,
    num_queries=900,
    with_box_refine=True,
    as_two_stage=True,
    num_feature_levels=4,
    data_preprocessor=dict(
        # DetDataPreprocessor's batch without host round trips (channel flip, padding from
        # Python ints; on a GPU the ground truth in one pinned copy per dtype)
        type='LeanDetDataPreprocessor',
        mean=[123.675, 116.28, 103.53],
        std=[58.395, 57.12, 57.375],
        bgr_to_rgb=True,
        # no padding to a multiple of 16 (the ViT pads inside, unmasked), and a batch padded
        # only to its largest image, as the original: padding to 16 here masks a strip the
        # original's model sees (tools/parity: 13% of the encoder memory on a 120x160 image)
        pad_size_divisor=1,
        non_blocking=True),  # overlaps the copy of pinned batches (dataset config)
    backbone=dict(
        type='TimmDinov2',
        model_name='vit_base_patch14_dinov2.lvd142m',
        pretrained=True,
        patch_size=16,
        out_indices=(-1, ),
        final_norm=False,
        frozen=True,
        fused_attn=True,  # scaled_dot_product_attention (flash / memory-efficient)
        compile=False),  # torch.compile the ViT (dict(dynamic=True) for multi-scale)
    neck=[
        dict(type='SimpleFeaturePyramid', in_channels=embed_dim, out_channels=256,
             scale_factors=(2.0, 1.0, 0.5), top_block=True),
        dict(type='ChannelMapper', in_channels=[256, 256, 256, 256], kernel_size=1,
             out_channels=256, act_cfg=None, norm_cfg=dict(type='GN', num_groups=32),
             bias=True, num_outs=4),  # bias before GN, as detrex's ChannelMapper
    ],
    encoder=dict(
        num_layers=6,
        layer_cfg=dict(
            self_attn_cfg=dict(embed_dims=256, num_levels=4, dropout=0.0),
            ffn_cfg=dict(embed_dims=256, feedforward_channels=2048, ffn_drop=0.0))),
    decoder=dict(
        num_layers=6,
        return_intermediate=True,
        layer_cfg=dict(
            self_attn_cfg=dict(embed_dims=256, num_heads=8, dropout=0.0),
            cross_attn_cfg=dict(embed_dims=256, num_levels=4, dropout=0.0),
            ffn_cfg=dict(embed_dims=256, feedforward_channels=2048, ffn_drop=0.0)),
        post_norm_cfg=None),
    # detrex's sine embedding: temperature 10000, normalised, offset -0.5
    positional_encoding=dict(num_feats=128, normalize=True, offset=-0.5, temperature=10000),
    bbox_head=dict(
        # DINOHead; all layers' matching in one batch and all 13 sets' losses in one pass,
        # normalisers on the device
        type='BatchMatchingDINOHead',
        num_classes=80,
        sync_cls_avg_factor=True,
        # mmdet's FocalLoss in float32 under AMP (mmcv's CUDA kernel has no bfloat16)
        loss_cls=dict(type='Float32FocalLoss', use_sigmoid=True, gamma=2.0, alpha=0.25,
                      loss_weight=1.0),
        loss_bbox=dict(type='L1Loss', loss_weight=5.0),
        loss_iou=dict(type='GIoULoss', loss_weight=2.0)),
    dn_cfg=dict(
        label_noise_scale=0.5,
        box_noise_scale=1.0,
        group_cfg=dict(dynamic=True, num_groups=None, num_dn_queries=100)),
    train_cfg=dict(
        assigner=dict(
            type='BatchHungarianAssigner',  # HungarianAssigner, one host copy per step
            match_costs=[
                dict(type='FocalLossCost', weight=2.0),
                dict(type='BBoxL1Cost', weight=5.0, box_format='xywh'),
                dict(type='IoUCost', iou_mode='giou', weight=2.0)
            ])),
    test_cfg=dict(max_per_img=300))
