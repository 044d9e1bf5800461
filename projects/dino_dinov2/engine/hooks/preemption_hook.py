"""Preemption and Ctrl-C: SIGTERM/SIGUSR1/SIGINT -> a resumable checkpoint at this iteration,
then exit 75 (130 after Ctrl-C).

SLURM (``--signal=B:TERM@120``, preemption, the time limit), Kubernetes and most job
schedulers send SIGTERM some seconds before they kill a job. :class:`PreemptionHook`
turns that into:

1. the signal handler only records the signal;
2. after the iteration in progress, all ranks agree (an all-reduce of the flag, so ranks
   signalled at slightly different moments stop after the same iteration);
3. rank 0 writes ``iter_<N>.pth`` with ``runner.save_checkpoint`` -- a normal mmengine
   checkpoint (model, optimizer, schedulers, message hub) plus every rank's RNG states,
   in the work dir (or ``out_dir``), written atomically as ``AtomicCheckpointHook`` writes --
   and then points ``<work_dir>/last_checkpoint`` at it;
4. the end-of-run hooks run (logs flushed, W&B finished), the process group is
   destroyed and every rank exits with :data:`PREEMPTED_EXIT_CODE` (75, ``EX_TEMPFAIL``
   of sysexits.h: "temporary failure, try again"), which job scripts use to resubmit.

``--resume`` then continues from that checkpoint. The project's loops
(``ResumableIterBasedTrainLoop``, ``ResumableEpochBasedTrainLoop``) skip the batches
already trained at the sampler (no image is loaded for them) and this hook restores the
RNG states right before the next batch is drawn, so with ``num_workers=0`` and a fixed seed in
deterministic mode the following iterations equal those of an uninterrupted run.
(With ``num_workers > 0`` the data order is the same but worker-side augmentation
randomness is not carried over.)

A signal during validation inside training stops after the current validation batch;
the checkpoint then holds the end of the epoch and the rest of that validation is not
re-run on resume.

Ctrl-C (SIGINT) stops the same way, with exit code 130 (128 + SIGINT, as a shell reports
an interrupted command); a second Ctrl-C aborts at once without saving (the checkpoints
already written stay: they are written atomically).
"""
from __future__ import annotations

import os
import os.path as osp
import random
import signal
import sys
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch
import torch.distributed as torch_dist
from mmengine.dist import all_gather_object, all_reduce, barrier, get_rank, is_distributed
from mmengine.hooks import Hook
from mmengine.registry import HOOKS
from mmengine.runner import EpochBasedTrainLoop

from ...errors import ConfigError
from ...upstream.atomic_checkpoint import ATOMIC_BACKEND_ARGS, write_last_checkpoint
from ...upstream.runner import built_loop

PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL: a temporary failure; run it again (with --resume)
INTERRUPTED_EXIT_CODE = 130  # 128 + SIGINT: stopped by Ctrl-C (checkpoint saved)
CHECKPOINT_KEY = 'preemption'


def get_rng_state() -> dict:
    """python, numpy, torch (and CUDA) generator states, as plain picklable values.

    numpy's key array is stored as a list so the checkpoint loads under
    ``torch.load(weights_only=True)`` without more allow-listed classes.
    """
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = dict(python=random.getstate(),
                 numpy=(name, keys.tolist(), int(pos), int(has_gauss), float(cached)),
                 torch=torch.get_rng_state())
    if torch.cuda.is_available():
        state['cuda'] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Inverse of :func:`get_rng_state`."""
    py = state['python']
    random.setstate((py[0], tuple(py[1]), py[2]))
    name, keys, pos, has_gauss, cached = state['numpy']
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state['torch'])
    if 'cuda' in state and torch.cuda.is_available():
        cuda = state['cuda']
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)


def _abort() -> None:
    print('Ctrl-C again: aborting without saving', file=sys.stderr, flush=True)
    raise SystemExit(INTERRUPTED_EXIT_CODE)


def _abort_handler(signum, frame) -> None:
    _abort()


@HOOKS.register_module()
class PreemptionHook(Hook):
    """Checkpoint at the current iteration on SIGTERM/SIGUSR1, then exit (see module doc).

    Args:
        signals: signal names to handle (SIGINT: Ctrl-C, exit 130, a second one aborts).
        exit_code: the exit status of every rank after a preemption checkpoint.
        filename_tmpl: checkpoint file name, formatted with the iterations done.
        out_dir, backend_args: where and how to write it (default: the work dir, atomic
            local writes, as ``AtomicCheckpointHook``'s; set both as the checkpoint
            hook's when checkpoints go elsewhere).
    """
    # after the LoggerHook, ParamSchedulerHook and CheckpointHook (VERY_LOW): the saved
    # state includes everything the iteration changed, and is logged.
    priority = 'VERY_LOW'

    def __init__(self, signals: Sequence[str] = ('SIGTERM', 'SIGUSR1', 'SIGINT'),
                 exit_code: int = PREEMPTED_EXIT_CODE, filename_tmpl: str = 'iter_{}.pth',
                 out_dir: Optional[str] = None, backend_args: Optional[dict] = None):
        self.signals = []
        for name in signals:
            if not hasattr(signal, name):
                raise ConfigError(f'PreemptionHook: unknown signal {name!r}')
            self.signals.append(getattr(signal, name))
        self.exit_code = int(exit_code)
        self.filename_tmpl = filename_tmpl
        self.out_dir = out_dir
        # local folders: atomic writes, as AtomicCheckpointHook's
        self.backend_args = dict(ATOMIC_BACKEND_ARGS) if backend_args is None and (
            out_dir is None or '://' not in str(out_dir)) else backend_args
        self.received: Optional[int] = None
        self._previous: Dict[int, object] = {}
        self._pending_rng: Optional[List[dict]] = None
        self._save_rng: Optional[List[dict]] = None
        self._pid: Optional[int] = None

    # -- signals ---------------------------------------------------------------------------

    def _handle(self, signum, frame) -> None:
        # Only record: saving from inside a signal handler could interrupt a collective
        # or an optimizer step half-way.
        if signum == signal.SIGINT and self.received is not None:
            _abort()
        if self.received is None:
            self.received = signum
            if signum == signal.SIGINT and get_rank() == 0 and os.getpid() == self._pid:
                print('Ctrl-C: finishing this iteration, then saving a checkpoint and exiting '
                      '(Ctrl-C again: abort now, without saving)', file=sys.stderr, flush=True)

    @property
    def _exit_code(self) -> int:
        return INTERRUPTED_EXIT_CODE if self.received == signal.SIGINT else self.exit_code

    def before_run(self, runner) -> None:
        self._pid = os.getpid()  # data-loader workers inherit the handler: they say nothing
        for sig in self.signals:
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave the defaults
                runner.logger.warning('PreemptionHook: signal handlers need the main thread; '
                                      'preemption checkpoints are off')
                return

    def after_run(self, runner) -> None:
        if self.received is not None:
            return  # stopping: _exit sets what the signals do until the process is gone
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _stop_requested(self) -> bool:
        flag = torch.tensor([0 if self.received is None else int(self.received)])
        if is_distributed():
            all_reduce(flag, op='max')
        if flag.item() and self.received is None:
            self.received = int(flag.item())
        return bool(flag.item())

    # -- stopping --------------------------------------------------------------------------

    def before_train(self, runner) -> None:
        if self._stop_requested():
            # nothing trained since the checkpoint resumed from (or the start)
            self._exit(runner, saved=None)

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        if self._stop_requested():
            n = runner.iter + 1
            self._save_and_exit(runner, meta=dict(epoch=runner.epoch, iter=n), rng=True)

    def after_val_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        if built_loop(runner, 'train') is None:
            return  # validation alone (tools/test.py): nothing to resume
        if self._stop_requested():
            # the training epoch is complete (its counters already advanced)
            self._save_and_exit(runner, meta=dict(epoch=runner.epoch, iter=runner.iter),
                                rng=False)

    def _save_and_exit(self, runner, meta: dict, rng: bool) -> None:
        states = all_gather_object(get_rng_state()) if rng else None
        out_dir = self.out_dir or runner.work_dir
        filename = self.filename_tmpl.format(meta['iter'])
        self._save_rng = states
        runner.save_checkpoint(out_dir, filename, meta=meta, by_epoch=False,
                               backend_args=self.backend_args)
        self._save_rng = None
        path = osp.join(out_dir, filename)
        if get_rank() == 0:
            write_last_checkpoint(runner.work_dir, path)  # atomic, as the CheckpointHook's
        barrier()
        self._exit(runner, saved=f'{path} (iteration {meta["iter"]})')

    def _exit(self, runner, saved: Optional[str]) -> None:
        name = signal.Signals(self.received).name if self.received else 'a signal'
        stopped = ('Interrupted by SIGINT (Ctrl-C)' if self.received == signal.SIGINT
                   else f'Preempted by {name}')
        where = f'saved {saved}' if saved else 'nothing new to save'
        runner.logger.warning(f'{stopped}: {where}; exiting with code {self._exit_code}. '
                              'Continue with --resume.')
        runner.call_hook('after_train')
        runner.call_hook('after_run')
        if is_distributed():
            barrier()
            torch_dist.destroy_process_group()
        # Ignored from here to the end of the process: a launcher that sees one rank exit
        # signals the others (torchrun: SIGTERM), and Python's shutdown gives a Python
        # handler back to the default (death by the signal, not 75); an ignored one stays.
        # Ctrl-C still aborts.
        for sig in self.signals:
            signal.signal(sig, signal.SIG_IGN if sig != signal.SIGINT else _abort_handler)
        raise SystemExit(self._exit_code)

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        if self._save_rng is not None:
            checkpoint[CHECKPOINT_KEY] = dict(signal=int(self.received or 0),
                                              rng_states=self._save_rng)

    # -- resuming mid-epoch ----------------------------------------------------------------

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        states = (checkpoint.get(CHECKPOINT_KEY) or {}).get('rng_states')
        self._pending_rng = states

    def _rng_restorer(self, runner):
        """A callable restoring this rank's RNG states from the resumed checkpoint."""
        states, self._pending_rng = self._pending_rng, None
        if not states:
            return None
        rank = get_rank()
        if len(states) <= rank:
            runner.logger.warning('PreemptionHook: the checkpoint has RNG states for '
                                  f'{len(states)} processes, not this one (rank {rank}); '
                                  'random draws will differ from an uninterrupted run')
            return None
        state = states[rank]
        return lambda: set_rng_state(state)

    def before_train_epoch(self, runner) -> None:
        loop = runner.train_loop
        if runner.iter > 0 and hasattr(loop, 'on_data_resumed'):
            # a Resumable*TrainLoop skips the trained batches itself; the RNG states go
            # back right before the next batch is drawn
            loop.on_data_resumed = self._rng_restorer(runner)
            return
        if self._pending_rng and isinstance(loop, EpochBasedTrainLoop):
            done = runner.iter - runner.epoch * len(loop.dataloader)
            if done > 0:
                runner.logger.warning(
                    f'PreemptionHook: mmengine\'s EpochBasedTrainLoop restarts epoch '
                    f'{runner.epoch + 1} from its first batch ({done} batches of it were '
                    "trained); train_cfg.type='ResumableEpochBasedTrainLoop' continues it")
        self._pending_rng = None


__all__ = ['INTERRUPTED_EXIT_CODE', 'PREEMPTED_EXIT_CODE', 'PreemptionHook', 'get_rng_state',
           'set_rng_state']
