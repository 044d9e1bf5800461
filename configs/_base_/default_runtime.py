# Runtime shared by every dino-dinov2 config (mmdet's default_runtime + the plugin import).
# Checkpoints and the last_checkpoint pointer are written atomically (a kill mid-write
# leaves the previous ones loadable) in types torch.load(weights_only=True) opens; a
# NaN/Inf loss stops the run before anything is saved (docs/robustness.md); a
# SIGTERM/SIGUSR1 writes a checkpoint and exits 75.
custom_imports = dict(imports=['projects.dino_dinov2'], allow_failed_imports=False)
default_scope = 'mmdet'

# The recipe's cadence (iteration-based): log every 20 iterations, a checkpoint every 2,500
# (with each validation). The original kept every checkpoint (36 of ~1 GB for ViT-B 12ep);
# the last 3 are kept here (max_keep_ckpts=-1 keeps all).
default_hooks = dict(
    # checkpoints written in plain types (weights_only=True opens them) and read back; older
    # ones read with MMEngine's own classes allowed (upstream/torch_load.py)
    checkpoint_loader=dict(type='CheckpointLoaderHook'),
    # the logged values copied to the host once per log line, not one read per value per
    # step, and checked for NaN/Inf there (the NaN guard)
    runtime_info=dict(type='DeferredRuntimeInfoHook'),
    timer=dict(type='IterTimerHook'),
    # every epoch's last batch logged too (mmengine skips it unless the epoch is a
    # multiple of the interval), also after a resume inside the epoch
    logger=dict(type='LoggerHook', interval=20, ignore_last=False),
    param_scheduler=dict(type='ParamSchedulerHook'),
    checkpoint=dict(type='AtomicCheckpointHook', by_epoch=False, interval=2500,
                    max_keep_ckpts=3),
    # SIGTERM/SIGUSR1: checkpoint at this iteration, exit 75 (docs/launching.md); here, not
    # added by tools/train.py, so a run of mmdet's own tools/train.py is preemption-safe too
    preemption=dict(type='PreemptionHook'),
    sampler_seed=dict(type='DistSamplerSeedHook'),
    visualization=dict(type='DetVisualizationHook'))

env_cfg = dict(
    cudnn_benchmark=False,
    mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
    dist_cfg=dict(backend='nccl'))

vis_backends = [dict(type='LocalVisBackend')]
visualizer = dict(type='DetLocalVisualizer', vis_backends=vis_backends, name='visualizer')
log_processor = dict(type='LogProcessor', window_size=20, by_epoch=False)

log_level = 'INFO'
load_from = None
resume = False
