"""Workarounds for what mmengine, mmdet, mmcv (on today's torch) and OpenVINO lack or break,
in one place.

Each module names the upstream issue or code it works around and when it can be deleted:

- :mod:`.torch_load`: checkpoints that ``torch.load(weights_only=True)`` opens, and the
  loader for older ones (mmengine#1655);
- :mod:`.atomic_checkpoint`: checkpoints and the ``last_checkpoint`` pointer written
  atomically, old checkpoints deleted after the new one;
- :mod:`.loops`: an iteration-based loop that resumes without reloading the trained data
  (mmengine#1520), and dataloader workers stopped after a run;
- :mod:`.early_stopping`: mmengine's early stopping with its count in the checkpoint;
- :mod:`.amp`: mixed precision on the CPU (mmengine's wrapper asserts a GPU);
- :mod:`.focal_loss`: mmdet's focal loss in float32 under AMP (mmcv#3061: no bfloat16);
- :mod:`.wandb_backend`: W&B against the iteration, never fatal, rank 0 only;
- :mod:`.launcher`: the process group without CUDA (gloo) and SLURM without ``scontrol``;
- :mod:`.config_check`: ``--cfg-options`` keys and types checked before merging;
- :mod:`.config_text`: a config's formatted text computed once (mmcv#2466);
- :mod:`.runner`: the Runner's private state, read in one place;
- :mod:`.openvino_core`: one ``openvino.Core`` per process and the signal stack kept valid
  around NNCF (OpenVINO's CPU plugin restores a freed signal stack: a SIGSEGV).

Importing it registers the hooks, loop, backends, loss and wrapper base in mmengine's and
mmdet's registries; it changes nothing else.
"""
from . import (amp, atomic_checkpoint, early_stopping, focal_loss, loops,  # noqa: F401
               torch_load, wandb_backend)
