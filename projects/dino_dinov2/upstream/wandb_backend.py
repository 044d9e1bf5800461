"""Weights & Biases tracking from the command line, through MMEngine's visualizer.

``--wandb`` adds a :class:`SafeWandbVisBackend` to ``visualizer.vis_backends``, so the
LoggerHook's scalars (losses, lr, COCO metrics) reach W&B next to the local JSON log,
and the Runner attaches the config. The flags mirror the original's: ``--wandb-project``,
``--group``, ``--job-type``, ``--wandb-entity``, ``--wandb-mode {online,offline}``
(``WANDB_MODE`` is honoured when the flag is not given) and ``--wandb-resume-id``.

Why a subclass of mmengine's ``WandbVisBackend``:

* the stock backend ignores ``step``, so W&B plots everything against its own call
  counter; here every row carries ``iter`` (training iterations done) and all metrics are
  defined against it, which also keeps a resumed run's curves in place;
* the stock backend raises when wandb cannot start (not installed, no API key, no
  network); here training goes on with one warning;
* only rank 0 may start a run, so a multi-process job makes one W&B run, not one per
  process.

The run id is written to ``<work_dir>/wandb_run_id``; ``--resume`` without
``--wandb-resume-id`` reads it back, so a preempted and resubmitted job continues the
same W&B run.

Upstream: mmengine 0.10.7 ``WandbVisBackend`` (step ignored: open-mmlab/mmengine#1072,
closed unmerged; #1099's ``define_metric_cfg`` needs the step metric in every row, which
its LoggerHook does not send for validation: #1692). Delete when the stock backend logs
against the iteration, survives a failed ``wandb.init`` and logs on rank 0 only.
"""
from __future__ import annotations

import logging
import os
import os.path as osp
from typing import Optional

from mmengine.dist import get_rank
from mmengine.logging import MessageHub, print_log
from mmengine.registry import VISBACKENDS
from mmengine.visualization import WandbVisBackend

from ..errors import first_line

WANDB_MODES = ('online', 'offline')
RUN_ID_FILE = 'wandb_run_id'
STEP_METRIC = 'iter'


@VISBACKENDS.register_module()
class SafeWandbVisBackend(WandbVisBackend):
    """mmengine's ``WandbVisBackend`` logging against iterations, on rank 0, never fatal.

    Args:
        save_dir: where the Runner puts visualizer files (``wandb/`` goes there unless
            ``init_kwargs['dir']`` or ``WANDB_DIR`` says otherwise).
        init_kwargs: ``wandb.init`` arguments (project, group, job_type, entity, mode,
            id, resume, name...).
        run_id_file: where to write the run id once the run started (None: nowhere).
        **kwargs: the other ``WandbVisBackend`` arguments.
    """

    def __init__(self, save_dir: str, init_kwargs: Optional[dict] = None,
                 run_id_file: Optional[str] = None, **kwargs):
        super().__init__(save_dir, init_kwargs=dict(init_kwargs or {}), **kwargs)
        self._run_id_file = run_id_file
        self._failed = False

    def _init_env(self):
        if get_rank() != 0:
            self._failed = True  # one run per job: only rank 0 logs
            return
        if os.environ.get('WANDB_DIR'):
            self._init_kwargs.setdefault('dir', os.environ['WANDB_DIR'])
        try:
            super()._init_env()
            self._wandb.define_metric(STEP_METRIC)
            self._wandb.define_metric('*', step_metric=STEP_METRIC)
        except Exception as e:  # noqa: BLE001  (any failure to start must not stop training)
            self._failed = True
            print_log(f'W&B could not start ({type(e).__name__}: {first_line(e, "")}); '
                      'training goes on without W&B logging', logger='current',
                      level=logging.WARNING)
            return
        run = self._wandb.run
        mode = self._init_kwargs.get('mode') or os.environ.get('WANDB_MODE') or 'online'
        print_log(f'W&B run {run.id} ({mode}): {run.dir}', logger='current')
        if self._run_id_file:
            os.makedirs(osp.dirname(osp.abspath(self._run_id_file)), exist_ok=True)
            with open(self._run_id_file, 'w') as f:
                f.write(run.id)

    @property
    def failed(self) -> bool:
        """True when W&B did not start (or this is not rank 0)."""
        return self._failed

    def add_config(self, config, **kwargs) -> None:
        if self._ensure():
            self._guarded(super().add_config, config, **kwargs)

    def add_graph(self, model, data_batch, **kwargs) -> None:
        if self._ensure():
            super().add_graph(model, data_batch, **kwargs)

    def add_image(self, name, image, step: int = 0, **kwargs) -> None:
        if self._ensure():
            super().add_image(name, image, step, **kwargs)

    def add_scalar(self, name, value, step: int = 0, **kwargs) -> None:
        self.add_scalars({name: value}, step, **kwargs)

    def add_scalars(self, scalar_dict: dict, step: int = 0, file_path=None, **kwargs) -> None:
        """Log one row; ``iter`` is the number of training iterations done.

        Training rows already hold ``iter`` (LogProcessor); validation rows get it from
        the message hub (the iteration the validation follows), else ``step``.
        """
        if not self._ensure():
            return
        row = dict(scalar_dict)
        if STEP_METRIC not in row:
            hub_iter = MessageHub.get_current_instance().get_info('iter')
            row[STEP_METRIC] = step if hub_iter is None else int(hub_iter) + 1
        self._guarded(self._wandb.log, row, commit=self._commit)

    def close(self) -> None:
        if not self._failed and hasattr(self, '_wandb'):
            self._wandb.finish()

    def _guarded(self, fn, *args, **kwargs) -> None:
        """Call a wandb function; on an error, warn once and stop logging to W&B."""
        try:
            fn(*args, **kwargs)
        except Exception as e:  # noqa: BLE001  (W&B trouble must not stop training)
            self._failed = True
            print_log(f'W&B logging failed ({type(e).__name__}: {first_line(e, "")}); training '
                      'goes on without W&B logging', logger='current', level=logging.WARNING)

    def _ensure(self) -> bool:
        """Start W&B on first use (as ``force_init_env`` does); False when it is off."""
        if not getattr(self, '_env_initialized', False):
            self._init_env()
            self._env_initialized = True
        return not self._failed


def read_run_id(work_dir: str) -> Optional[str]:
    """The W&B run id a previous run in ``work_dir`` recorded, or None."""
    path = osp.join(work_dir, RUN_ID_FILE)
    if osp.isfile(path):
        run_id = open(path).read().strip()
        return run_id or None
    return None
