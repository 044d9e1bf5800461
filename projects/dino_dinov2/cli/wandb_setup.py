"""``--wandb`` and its flags: a :class:`SafeWandbVisBackend` in ``visualizer.vis_backends``
with ``wandb.init`` arguments from the flags (the backend: ``engine/wandb_backend.py``)."""
from __future__ import annotations

import os.path as osp
from typing import Optional

from ..upstream.wandb_backend import RUN_ID_FILE, WANDB_MODES, read_run_id
from ..errors import ConfigError


def wandb_init_kwargs(project: Optional[str] = None, group: Optional[str] = None,
                      job_type: Optional[str] = None, entity: Optional[str] = None,
                      mode: Optional[str] = None, resume_id: Optional[str] = None,
                      name: Optional[str] = None) -> dict:
    """``wandb.init`` arguments from the command-line flags (unset flags are left out)."""
    if mode is not None and mode not in WANDB_MODES:
        raise ConfigError(f'--wandb-mode {mode!r}: choose one of {", ".join(WANDB_MODES)}')
    kwargs = dict(project=project, group=group, job_type=job_type, entity=entity, mode=mode,
                  name=name)
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    if resume_id:
        # a resumed training's config differs (resume, load_from...): W&B must accept it
        kwargs.update(id=resume_id, resume='allow', allow_val_change=True)
    return kwargs


def enable_wandb(cfg, project: Optional[str] = 'dino-dinov2', group: Optional[str] = None,
                 job_type: Optional[str] = None, entity: Optional[str] = None,
                 mode: Optional[str] = None, resume_id: Optional[str] = None,
                 resume: bool = False) -> dict:
    """Add W&B to ``cfg.visualizer``; returns the ``wandb.init`` arguments used.

    ``resume``: the training resumes (``--resume``); without ``resume_id`` the run id
    recorded in the work dir is reused, so the W&B run continues too.
    """
    if resume and not resume_id:
        resume_id = read_run_id(cfg.work_dir)
    init_kwargs = wandb_init_kwargs(project, group, job_type, entity, mode, resume_id,
                                    name=osp.basename(osp.normpath(cfg.work_dir)))
    backend = dict(type='SafeWandbVisBackend', init_kwargs=init_kwargs,
                   run_id_file=osp.join(cfg.work_dir, RUN_ID_FILE))
    if 'visualizer' not in cfg or cfg.visualizer is None:
        raise ConfigError('--wandb needs a visualizer in the config (default_runtime.py has '
                          'one)')
    backends = list(cfg.visualizer.get('vis_backends', None) or [])
    backends = [b for b in backends
                if b.get('type') not in ('WandbVisBackend', 'SafeWandbVisBackend')]
    cfg.visualizer.vis_backends = backends + [backend]
    return init_kwargs
