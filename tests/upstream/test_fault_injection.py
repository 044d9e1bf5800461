"""Kill a real training again and again -- during checkpoint writes and at a random
iteration -- and check each time that the newest checkpoint loads and --resume goes on.

One run of tools/train.py on 8 images, batch 2, 3 epochs (12 iterations), a checkpoint
every 2 iterations, ``max_keep_ckpts=1`` (the setting where mmengine's own hook deletes
the only good checkpoint before the new one is written). Each process is SIGKILLed:

1. in the middle of writing ``iter_4.pth`` (``fault_train.py`` beside this file runs
   tools/train.py with one write paused half-way);
2. after resuming, in the middle of writing the ``last_checkpoint`` pointer;
3. after resuming, once it logged an iteration drawn by a seeded RNG (wherever it is);
4. the last ``--resume`` runs to the end.
"""
import glob
import os
import os.path as osp
import random
import subprocess
import sys
import time

from helpers import REPO, SYNTHETIC_CONFIG, clean_env, tiny_run_options, wait_for_iteration
from projects.dino_dinov2.cli import check_checkpoint_file, load_local_checkpoint

FAULT_TRAIN = osp.join(REPO, 'tests', 'upstream', 'fault_train.py')

ITERS = 12


def _start(work_dir, data_root, log_path, resume=False, fault=None):
    pause = [FAULT_TRAIN, *fault.split('@')] if fault else []  # '<seconds>@<n-th write>'
    cmd = [sys.executable, *pause, 'tools/train.py', SYNTHETIC_CONFIG, '--work-dir', work_dir,
           '--seed', '0', '--batch-size', '2', *(['--resume'] if resume else []),
           '--cfg-options', *tiny_run_options(data_root, epochs=3),
           'default_hooks.checkpoint.by_epoch=False', 'default_hooks.checkpoint.interval=2',
           'default_hooks.checkpoint.max_keep_ckpts=1']
    env = clean_env({'OMP_NUM_THREADS': '1'})
    log = open(log_path, 'w')
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    proc.log_file, proc.log_path = log, log_path
    return proc


def _kill(proc):
    proc.kill()  # SIGKILL: no handler, no cleanup
    proc.wait(timeout=60)
    proc.log_file.close()
    return open(proc.log_path).read()


def _wait_for_file(pattern, proc, timeout=600):
    """Block until a non-empty file matches ``pattern`` (the writer is paused in it)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = [p for p in glob.glob(pattern) if osp.getsize(p) > 0]
        if found:
            return found[0]
        if proc.poll() is not None:
            proc.log_file.close()
            raise AssertionError(f'training exited ({proc.returncode}) before writing '
                                 f'{pattern}:\n{open(proc.log_path).read()[-3000:]}')
        time.sleep(0.05)
    raise AssertionError(f'{pattern} did not appear in {timeout} s')


def _newest(work_dir):
    """The checkpoint ``last_checkpoint`` names: it must be complete and loadable."""
    path = open(osp.join(work_dir, 'last_checkpoint')).read().strip()
    check_checkpoint_file(path)
    ckpt = load_local_checkpoint(path, map_location='cpu')
    assert ckpt['meta']['iter'] == int(osp.basename(path)[len('iter_'):-len('.pth')])
    return path, ckpt['meta']['iter']


def _resumed_at(log):
    lines = [ln for ln in log.splitlines() if 'resumed epoch:' in ln]
    assert len(lines) == 1, log[-3000:]
    return int(lines[0].rsplit('iter:', 1)[1])


def test_kills_during_writes_and_at_random_iterations(tiny_synthetic_data, tmp_path):
    wd = str(tmp_path / 'run')
    rng = random.Random(0)

    # 1. killed half-way through writing iter_4.pth (atomic writes: iter_2.pth, its
    #    pointer, then iter_4.pth is the 3rd)
    proc = _start(wd, tiny_synthetic_data, tmp_path / '1.log', fault='600@3')
    partial = _wait_for_file(osp.join(wd, '.iter_4.pth.tmp-*'), proc)
    _kill(proc)
    assert _newest(wd) == (osp.join(wd, 'iter_2.pth'), 2)
    assert not osp.exists(osp.join(wd, 'iter_4.pth')) and osp.exists(partial)

    # 2. resumed from iter_2; killed half-way through pointing last_checkpoint at iter_4
    #    (its 2nd write): the pointer still names iter_2, which was not deleted yet
    proc = _start(wd, tiny_synthetic_data, tmp_path / '2.log', resume=True, fault='600@2')
    _wait_for_file(osp.join(wd, '.last_checkpoint.tmp-*'), proc)
    log = _kill(proc)
    assert _resumed_at(log) == 2
    assert f'removed {partial}: the partial write of a process that was killed' in log
    assert _newest(wd) == (osp.join(wd, 'iter_2.pth'), 2)
    check_checkpoint_file(osp.join(wd, 'iter_4.pth'))  # complete, just not pointed at yet

    # 3. resumed again; SIGKILL after a random iteration, wherever the process is then
    proc = _start(wd, tiny_synthetic_data, tmp_path / '3.log', resume=True)
    kill_after = rng.randint(5, 9)
    wait_for_iteration(wd, kill_after, proc)
    log = _kill(proc)
    assert _resumed_at(log) == 2
    newest, at = _newest(wd)
    assert at >= 4, (kill_after, at)

    # 4. --resume goes on to the end from the newest checkpoint
    proc = _start(wd, tiny_synthetic_data, tmp_path / '4.log', resume=True)
    assert proc.wait(timeout=900) == 0, open(proc.log_path).read()[-3000:]
    proc.log_file.close()
    log = open(proc.log_path).read()
    assert _resumed_at(log) == at
    assert _newest(wd) == (osp.join(wd, f'iter_{ITERS}.pth'), ITERS)
    left = sorted(os.listdir(wd))
    assert [f for f in left if f.endswith('.pth')] == [f'iter_{ITERS}.pth']  # max_keep 1
    assert not [f for f in left if '.tmp-' in f]
