# The original's way of running the same model (docs/benchmarks.md, docs/parity.md):
# pure-PyTorch deformable attention on every device; timm's fused attention in the ViT (on
# by default in timm, so the original had it); the frozen ViT called with autograd on;
# Hungarian matching as detrex's HungarianMatcher: one cost matrix per decoder layer for the
# whole batch, one copy to the host per layer, SciPy per image; mmdet's loss code layer by
# layer and its step as written (host reads of sizes and normalisers: lean_step and
# batched_losses off, mmdet's data preprocessor); no compile, no checkpointing, no
# non-blocking copies. Same parameters and state-dict keys: checkpoints
# load in both modes. Use as `model = {{_base_.original_mode}}` in a config that also
# inherits a model. "Mixed" precision in the original is float16 autocast with a GradScaler:
# `amp_dtype` makes --amp (and tools/benchmark.py's mixed rows) use it.
original_mode = dict(
    deform_attn_impl='pytorch',
    lean_step=False,
    data_preprocessor=dict(type='DetDataPreprocessor', non_blocking=False),
    checkpoint_encoder=False,
    checkpoint_decoder=False,
    backbone=dict(frozen_no_grad=False, fused_attn=True, compile=False),
    bbox_head=dict(type='BatchMatchingDINOHead', matching='layer', batched_losses=False),
    train_cfg=dict(assigner=dict(type='BatchHungarianAssigner', batched_costs=True)))
original_amp_dtype = 'float16'
# detectron2's trainer: the parameter groups merged by settings (its reduce_param_groups),
# torch's default AdamW update (foreach on a GPU, not fused), the gradient norm not read;
# every loss read back to the host each iteration (its _write_metrics): mmengine's hook
original_optim_wrapper = dict(paramwise_cfg=dict(fused=False))
original_default_hooks = dict(runtime_info=dict(type='RuntimeInfoHook'))
