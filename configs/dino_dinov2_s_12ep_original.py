# dino_dinov2_s_12ep run the original's way, stock mmdet (configs/_base_/models/original_mode.py):
# the baseline every speed-up is measured against (docs/benchmarks.md). Full precision by
# default (the schedule's optimizer wrapper); --amp gives the "Mixed" row (float16).
_base_ = ['./dino_dinov2_s_12ep.py', './_base_/models/original_mode.py']
model = dict(
    _delete_=True,
    type='DINO',
    num_queries={{_base_.model.num_queries}},
    with_box_refine=True,
    as_two_stage=True,
    num_feature_levels={{_base_.model.num_feature_levels}},
    data_preprocessor={{_base_.original_data_preprocessor}},
    backbone={{_base_.model.backbone}},
    neck={{_base_.model.neck}},
    encoder={{_base_.model.encoder}},
    decoder={{_base_.model.decoder}},
    positional_encoding={{_base_.model.positional_encoding}},
    bbox_head=dict(
        type='DINOHead',
        num_classes={{_base_.model.bbox_head.num_classes}},
        sync_cls_avg_factor=True,
        loss_cls=dict(type='FocalLoss', use_sigmoid=True, gamma=2.0, alpha=0.25,
                      loss_weight=1.0),
        loss_bbox={{_base_.model.bbox_head.loss_bbox}},
        loss_iou={{_base_.model.bbox_head.loss_iou}}),
    dn_cfg={{_base_.model.dn_cfg}},
    train_cfg=dict(assigner=dict(type='HungarianAssigner',
                                 match_costs={{_base_.model.train_cfg.assigner.match_costs}})),
    test_cfg={{_base_.model.test_cfg}})
optim_wrapper = {{_base_.original_optim_wrapper}}
default_hooks = {{_base_.original_default_hooks}}
amp_dtype = {{_base_.original_amp_dtype}}  # --amp: float16 + GradScaler, as the original
