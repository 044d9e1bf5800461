# dino_dinov2_s_12ep run the original's way (configs/_base_/models/original_mode.py):
# the baseline every speed-up is measured against (docs/benchmarks.md). Full precision by
# default (the schedule's OptimWrapper); --amp gives the "Mixed" row (float16).
_base_ = ['./dino_dinov2_s_12ep.py', './_base_/models/original_mode.py']
model = {{_base_.original_mode}}
optim_wrapper = {{_base_.original_optim_wrapper}}
default_hooks = {{_base_.original_default_hooks}}
amp_dtype = {{_base_.original_amp_dtype}}  # --amp: float16 + GradScaler, as the original
