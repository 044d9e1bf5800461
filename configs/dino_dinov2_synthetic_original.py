# The synthetic config run the original's way (configs/_base_/models/original_mode.py):
# the tiny model for comparing the two modes on a CPU or in tests.
_base_ = ['./dino_dinov2_synthetic.py', './_base_/models/original_mode.py']
model = {{_base_.original_mode}}
optim_wrapper = {{_base_.original_optim_wrapper}}
default_hooks = {{_base_.original_default_hooks}}
amp_dtype = {{_base_.original_amp_dtype}}  # --amp: float16 + GradScaler, as the original
