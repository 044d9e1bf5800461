# The original's optimiser and schedule (../shared/docs/PARITY.md, docs/parity.md):
# AdamW 1e-4; lr x0.1 for the backbone *and* the simple feature pyramid (the original built
# the pyramid inside its `backbone` module, so detrex's lr factor reached it); weight decay
# 1e-4, 0 on GroupNorm/LayerNorm parameters (detrex's weight_decay_norm=0; the pyramid's LN2d
# is not among those types, as detectron2's LayerNorm was not); gradient clipping 0.1 (L2).
# "12 epochs" = 90,000 iterations at total batch 16 (7,500 per epoch), lr x0.1 at 82,500,
# no warm-up; validation every 2,500 iterations (checkpoints: default_runtime.py).
# LeanOptimWrapperConstructor: the same per-parameter settings in a few merged groups, a
# fused AdamW update where the device has one (optimizer.fused=False: torch's default);
# LeanOptimWrapper: mmengine's OptimWrapper, the gradient norm logged without a host read
# per step.
# tools/train.py rescales the iteration counts to another total batch so the run sees the
# same number of images (projects/dino_dinov2/cli/schedule.py); the lr: --auto-scale-lr.
optim_wrapper = dict(
    type='LeanOptimWrapper',
    constructor='LeanOptimWrapperConstructor',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=1e-4),
    clip_grad=dict(max_norm=0.1, norm_type=2),
    paramwise_cfg=dict(
        norm_decay_mult=0.0,
        custom_keys={'backbone': dict(lr_mult=0.1), 'neck.0': dict(lr_mult=0.1)}))

max_iters = 90000
# the schedule in passes over COCO ("epochs" of 7,500 iterations): --data-root trains this
# many passes over the user's dataset instead (cli/schedule.py set_epochs; or --epochs N)
max_epochs = 12
train_cfg = dict(type='ResumableIterBasedTrainLoop', max_iters=max_iters, val_interval=2500)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')

param_scheduler = [
    dict(type='MultiStepLR', begin=0, end=max_iters, by_epoch=False, milestones=[82500],
         gamma=0.1)
]
auto_scale_lr = dict(enable=False, base_batch_size=16)
