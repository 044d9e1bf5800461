# dino_dinov2_s_12ep run the original's way (configs/_base_/models/original_mode.py):
# the baseline every speed-up is measured against (docs/benchmarks.md). Full precision by
# default (the schedule's OptimWrapper); --amp gives the "Mixed" row.
_base_ = ['./dino_dinov2_s_12ep.py', './_base_/models/original_mode.py']
model = {{_base_.original_mode}}
