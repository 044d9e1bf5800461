"""A real 2-process torchrun training on the CPU (gloo) through tools/dist_train.sh:
preempted by a signal, resumed, both ranks identical, one W&B run."""
import math
import os
import os.path as osp
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

from helpers import (HERE, REPO, SYNTHETIC_CONFIG, clean_env, free_port, isolated_wandb_env,
                     offline_runs, read_checkpoint, tiny_run_options, wait_for_iteration, wandb_run)


@pytest.fixture(scope='module')
def torchrun_run(tiny_synthetic_data, tmp_path_factory):
    """2 processes x batch 1 on 8 images (4 iterations), W&B offline, sqrt lr scaling.

    The job gets SIGUSR1 after its first iteration (as a preemptible cluster would send
    it), then the same command with ``--resume`` finishes the epoch.
    """
    root = tmp_path_factory.mktemp('torchrun')
    work_dir = str(root / 'work')
    # the synthetic config plus a hook that saves every rank's final weights
    config = root / 'synthetic_rank_weights.py'
    config.write_text(f'_base_ = [{SYNTHETIC_CONFIG!r}]\n'
                      "custom_imports = dict(imports=['projects.dino_dinov2', "
                      "'helpers'], allow_failed_imports=False)\n"
                      "custom_hooks = [dict(type='RankWeightsHook')]\n")
    env = clean_env(dict(isolated_wandb_env(str(root / 'wandb')), PORT=str(free_port()),
                         PYTHONPATH=os.pathsep.join(filter(None, [
                             HERE, os.environ.get('PYTHONPATH')])),
                         OMP_NUM_THREADS='1', PYTHON=sys.executable))
    cmd = ['bash', 'tools/dist_train.sh', str(config), '2', '--work-dir', work_dir,
           '--batch-size', '1', '--auto-scale-lr', 'sqrt', '--seed', '0', '--wandb',
           '--wandb-mode', 'offline', '--cfg-options',
           *tiny_run_options(tiny_synthetic_data, epochs=1),
           'auto_scale_lr.base_batch_size=1']
    out = dict(work_dir=work_dir, wandb_dir=str(root / 'wandb'))

    log_path = root / 'preempted.log'
    with open(log_path, 'w') as log:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            wait_for_iteration(work_dir, 1, proc)
            proc.send_signal(signal.SIGUSR1)
            t1 = time.time()
            out['preempted_rc'] = proc.wait(timeout=600)
            out['signal_to_exit_s'] = time.time() - t1
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    out['preempted_log'] = log_path.read_text()
    out['last_checkpoint'] = open(osp.join(work_dir, 'last_checkpoint')).read().strip()
    out['runs_after_preemption'] = offline_runs(out['wandb_dir'])

    proc = subprocess.run(cmd + ['--resume'], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=900)
    out['log'] = proc.stdout + proc.stderr
    assert proc.returncode == 0, out['log'][-5000:]
    return out


def test_preemption_stops_both_ranks_with_exit_75(torchrun_run):
    log = torchrun_run['preempted_log']
    assert torchrun_run['preempted_rc'] == 75, log[-4000:]
    assert 'got SIGUSR1: passing it to the training processes' in log
    assert 'Preempted by SIGUSR1' in log and re.search(r'exitcode\s*:\s*75', log)
    ckpt = read_checkpoint(torchrun_run['last_checkpoint'], map_location='cpu')
    stopped = ckpt['meta']['iter']
    assert osp.basename(torchrun_run['last_checkpoint']) == f'iter_{stopped}.pth'
    assert 1 <= stopped <= 4
    assert len(ckpt['preemption']['rng_states']) == 2  # one per rank
    assert f'resumed epoch: 0, iter: {stopped}' in torchrun_run['log']


def test_two_ranks_end_with_identical_weights(torchrun_run):
    work_dir = torchrun_run['work_dir']
    w0 = read_checkpoint(osp.join(work_dir, 'rank0_weights.pth'))
    w1 = read_checkpoint(osp.join(work_dir, 'rank1_weights.pth'))
    assert w0.keys() == w1.keys()
    for k in w0:
        torch.testing.assert_close(w0[k], w1[k], rtol=0, atol=0, msg=k)
    ckpt = read_checkpoint(osp.join(work_dir, 'epoch_1.pth'), map_location='cpu')
    assert ckpt['meta']['iter'] == 4  # 8 images / (2 processes x 1)
    for k, v in ckpt['state_dict'].items():
        torch.testing.assert_close(v, w0[k], rtol=0, atol=0, msg=k)


def test_distributed_on_gloo_with_the_effective_batch_logged(torchrun_run):
    log = torchrun_run['log']
    assert 'Distributed launcher: pytorch' in log and 'GPU number: 2' in log
    assert ('effective total batch 2 (1 per process x 2 processes); lr 2.000e-04 x '
            'sqrt(2/1) (sqrt scaling, base batch 1) = 2.828e-04') in log
    lr = 2e-4 * math.sqrt(2)
    m = re.search(r'param group lr ([0-9.e+-]+): (\d+) tensors \(([^)]*)\)', log)
    assert m and float(m.group(1)) == pytest.approx(lr, rel=1e-3)
    assert 'backbone' in m.group(3)  # the synthetic config trains it at the full lr
    ckpt = read_checkpoint(osp.join(torchrun_run['work_dir'], 'epoch_1.pth'), map_location='cpu')
    assert all(g['lr'] == pytest.approx(lr, rel=1e-12)
               for g in ckpt['optimizer']['param_groups'])


def test_one_wandb_run_not_two(torchrun_run):
    first = torchrun_run['runs_after_preemption']
    assert len(first) == 1, first  # rank 0 only
    runs = offline_runs(torchrun_run['wandb_dir'])
    assert len(runs) == 2  # the resumed job continues the same run
    ids = {wandb_run(r)['run_id'] for r in runs}
    assert len(ids) == 1
    rows = [r for run in runs for r in wandb_run(run)['history'] if 'loss' in r]
    assert sorted({r['iter'] for r in rows}) == [1, 2, 3, 4]


def test_report_seconds_per_iteration(torchrun_run):
    times = [float(t) for t in re.findall(r'Epoch\(train\).*?\s time: ([0-9.]+)',
                                          torchrun_run['preempted_log'] + torchrun_run['log'])]
    assert len(times) == 4
    print(f'\n2-process torchrun (gloo, CPU, batch 1 per process): {times} s/iter; '
          f'SIGUSR1 to exit: {torchrun_run["signal_to_exit_s"]:.1f} s')


def test_dist_test_prints_the_metrics_once(torchrun_run, tiny_synthetic_data):
    """tools/dist_test.sh on the run's checkpoint: 2 processes evaluate, rank 0 alone prints
    the launch line and the metric block."""
    env = clean_env(dict(PORT=str(free_port()), OMP_NUM_THREADS='1', PYTHON=sys.executable,
                         PYTHONPATH=os.pathsep.join(filter(None, [
                             HERE, os.environ.get('PYTHONPATH')]))))
    proc = subprocess.run(
        ['bash', 'tools/dist_test.sh', SYNTHETIC_CONFIG,
         osp.join(torchrun_run['work_dir'], 'epoch_1.pth'), '2', '--work-dir',
         osp.join(torchrun_run['work_dir'], 'test'), '--cfg-options',
         *tiny_run_options(tiny_synthetic_data, epochs=1)],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert len(re.findall(r'^bbox mAP: \d\.\d{3}$', out, re.M)) == 1, out[-4000:]
    assert len(re.findall(r'^launcher: pytorch, 2 processes', out, re.M)) == 1
