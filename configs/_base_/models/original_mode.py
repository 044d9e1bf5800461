# The original's way of running the same model (docs/benchmarks.md, docs/parity.md), shared
# by the *_original.py configs: stock mmdet by type (DINO, DINOHead, HungarianAssigner,
# CdnQueryGenerator, DetDataPreprocessor, mmcv's MultiScaleDeformableAttention: PyTorch on
# the CPU, mmcv's CUDA kernel on a GPU, which needs mmcv's CUDA ops: MMCV_CUDA_OPS=1
# tools/install.sh; the PyTorch path on a GPU is model.deform_attn_impl=pytorch of the
# recipe configs). Hungarian matching per image and layer, mmdet's loss code layer by
# layer, host reads of sizes and normalisers, no compile, no checkpointing, no
# non-blocking copies. Same parameters and state-dict keys as the recipe configs:
# checkpoints load in both. "Mixed" precision in the original is float16 autocast with a
# GradScaler: `amp_dtype` makes --amp (and tools/benchmark.py's mixed rows) use it.
original_data_preprocessor = dict(
    type='DetDataPreprocessor',
    mean=[123.675, 116.28, 103.53],
    std=[58.395, 57.12, 57.375],
    bgr_to_rgb=True,
    pad_size_divisor=1)
original_amp_dtype = 'float16'
# detectron2's trainer: the parameter groups merged by settings (its reduce_param_groups),
# torch's default AdamW update (foreach on a GPU, not fused), the gradient norm not read;
# every loss read back to the host each iteration (its _write_metrics): mmengine's hook,
# and a NaN check each iteration (detectron2's FloatingPointError)
original_optim_wrapper = dict(optimizer=dict(fused=False))
original_default_hooks = dict(runtime_info=dict(type='RuntimeInfoHook'),
                              nan_guard=dict(type='NanGuardHook'))
