"""Preemption of a 2-process torchrun run (gloo, CPU) at an iteration between log lines.

The signal lands after iteration 2 with the logger writing every 3: rank 0's checkpoint is
written while iterations 1-2 are still held for the next log line (the case that deadlocked
when a collective ran inside rank 0's ``save_checkpoint``). Once on one rank, once on all:
every rank exits 75, ``iter_2.pth`` holds both ranks' RNG states, and ``--resume`` continues
inside the epoch (``[1][3/4]``, the epoch's last batch logged) to the uninterrupted run's
weights, bit for bit.
"""
import os.path as osp
import re
import subprocess
import sys

import pytest
import torch

from helpers import (REPO, clean_env, free_port, hooked_config, read_checkpoint,
                     pythonpath_with_tests, tiny_run_options)

STOP = 2  # the iteration the signal follows; the logger writes at 3 (and 4, 7, 8)


def _train(config, work_dir, data, *extra, timeout=420):
    env = clean_env(dict(PORT=str(free_port()), OMP_NUM_THREADS='1', PYTHON=sys.executable,
                         PYTHONPATH=pythonpath_with_tests()))
    cmd = ['bash', 'tools/dist_train.sh', config, '2', '--work-dir', work_dir,
           '--batch-size', '1', '--seed', '0', '--deterministic', *extra, '--cfg-options',
           *tiny_run_options(data, epochs=2), 'default_hooks.logger.interval=3']
    try:
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True,
                              timeout=timeout, start_new_session=True)
    except subprocess.TimeoutExpired as e:  # a deadlock: fail, do not hang the suite
        out = (e.stdout or b'').decode() + (e.stderr or b'').decode()
        raise AssertionError(f'no exit in {timeout} s (deadlock?):\n{out[-4000:]}') from None
    return proc.returncode, proc.stdout + proc.stderr


@pytest.fixture(scope='module')
def runs(tiny_synthetic_data, tmp_path_factory):
    """The uninterrupted run, and the run signalled on rank 1 alone / on every rank, each
    resumed to the end."""
    root = tmp_path_factory.mktemp('preempt_2proc')
    out = {}
    plain = hooked_config(root / 'plain.py', "dict(type='RankWeightsHook')")
    ref = str(root / 'reference')
    rc, log = _train(plain, ref, tiny_synthetic_data)
    assert rc == 0, log[-4000:]
    out['reference'] = dict(work_dir=ref, log=log)
    for name, ranks in (('one_rank', '[1]'), ('all_ranks', 'None')):
        work_dir = str(root / name)
        config = hooked_config(root / f'{name}.py', "dict(type='RankWeightsHook')",
                               "dict(type='SignalAtIterationHook', iteration=%d, "
                               "signal='SIGTERM', ranks=%s)" % (STOP, ranks))
        rc, log = _train(config, work_dir, tiny_synthetic_data)
        last = open(osp.join(work_dir, 'last_checkpoint')).read().strip() \
            if osp.exists(osp.join(work_dir, 'last_checkpoint')) else None
        resumed_rc, resumed_log = _train(plain, work_dir, tiny_synthetic_data,
                                         '--resume')
        out[name] = dict(work_dir=work_dir, rc=rc, log=log, last_checkpoint=last,
                         resumed_rc=resumed_rc, resumed_log=resumed_log)
    return out


@pytest.mark.parametrize('name', ['one_rank', 'all_ranks'])
def test_every_rank_saves_and_exits_75(runs, name):
    run = runs[name]
    log = run['log']
    # torchrun's summary: both ranks exited 75 (torchrun itself reports 1 for stopped
    # workers it was not asked to stop; a signal to dist_train.sh gives 75: test_launch_torchrun)
    exits = re.findall(r'^\s*rank\s*:\s*(\d+) \(local_rank.*\n\s*exitcode\s*:\s*(-?\d+)', log,
                       re.M)
    assert sorted(exits) == [('0', '75'), ('1', '75')], log[-4000:]
    assert run['rc'] != 0
    assert f'iter_{STOP}.pth (iteration {STOP})' in log
    assert osp.basename(run['last_checkpoint']) == f'iter_{STOP}.pth'
    ckpt = read_checkpoint(run['last_checkpoint'])
    assert ckpt['meta']['iter'] == STOP
    assert len(ckpt['preemption']['rng_states']) == 2
    # the held values of iterations 1-2 reached the checkpoint's message hub
    assert len(ckpt['message_hub']['log_scalars']['train/loss']['log_history']) == STOP


@pytest.mark.parametrize('name', ['one_rank', 'all_ranks'])
def test_resume_reaches_the_uninterrupted_weights(runs, name):
    run = runs[name]
    assert run['resumed_rc'] == 0, run['resumed_log'][-4000:]
    assert f'resumed epoch: 0, iter: {STOP}' in run['resumed_log']
    ref = read_checkpoint(osp.join(runs['reference']['work_dir'], 'epoch_2.pth'))
    got = read_checkpoint(osp.join(run['work_dir'], 'epoch_2.pth'))
    assert got['meta']['iter'] == ref['meta']['iter'] == 8
    for key, value in ref['state_dict'].items():
        torch.testing.assert_close(got['state_dict'][key], value, rtol=0, atol=0, msg=key)
    for rank in (0, 1):  # and both ranks hold them
        weights = read_checkpoint(osp.join(run['work_dir'], f'rank{rank}_weights.pth'))
        for key, value in ref['state_dict'].items():
            torch.testing.assert_close(weights[key], value, rtol=0, atol=0, msg=key)


def test_the_log_counts_on_inside_the_resumed_epoch(runs):
    log = runs['one_rank']['resumed_log']
    lines = re.findall(r'Epoch\(train\)\s+\[(\d+)\]\[\s*(\d+)/(\d+)\]', log)
    # skipped 2 of 4: the next line at batch 3 (interval 3), then the epoch's last batch
    assert lines[:2] == [('1', '3', '4'), ('1', '4', '4')], lines
    assert ('2', '4', '4') in lines
    # printed once and logged once (rank 0 alone), besides the config's copy in the log
    assert len(re.findall(r'^launcher: pytorch, 2 processes, backend gloo', log, re.M)) == 1
    assert len(re.findall(r'INFO - launcher: pytorch, 2 processes', log)) == 1


def test_ctrl_c_in_the_terminal_stops_every_rank_with_130(tiny_synthetic_data, tmp_path):
    """Ctrl-C goes to the terminal's process group: dist_train.sh (torchrun runs in a
    session of its own) passes it to the workers once; each rank saves and exits 130,
    dist_train.sh exits 130."""
    import os
    import signal
    import time

    from helpers import read_progress
    config = hooked_config(tmp_path / 'progress.py', "dict(type='ProgressHook', delay_s=0.5)")
    work_dir = str(tmp_path / 'work')
    env = clean_env(dict(PORT=str(free_port()), OMP_NUM_THREADS='1', PYTHON=sys.executable,
                         PYTHONPATH=pythonpath_with_tests()))
    proc = subprocess.Popen(['bash', 'tools/dist_train.sh', config, '2', '--work-dir', work_dir,
                             '--batch-size', '1', '--cfg-options',
                             *tiny_run_options(tiny_synthetic_data, epochs=2)],
                            cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.time() + 300
        while read_progress(work_dir) < 1 and proc.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGINT)  # what the terminal does on Ctrl-C
        out, _ = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, out[-4000:]
    assert 'Interrupted by SIGINT (Ctrl-C): saved' in out
    exits = re.findall(r'^\s*rank\s*:\s*(\d+) \(local_rank.*\n\s*exitcode\s*:\s*(-?\d+)', out,
                       re.M)
    assert sorted(exits) == [('0', '130'), ('1', '130')], out[-4000:]
    last = open(osp.join(work_dir, 'last_checkpoint')).read().strip()
    assert len(read_checkpoint(last)['preemption']['rng_states']) == 2
