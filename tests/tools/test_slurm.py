"""The SLURM scripts on a real SLURM cluster (Debian's slurm-wlm + munge on this machine, two
partitions, tests/slurm_cluster.py), as a user runs them: 2 CPU tasks over gloo.

* ``tools/slurm_train.sh`` on a CPU partition (``GPUS_PER_NODE=0``): the uninterrupted run;
* ``tools/sbatch_preemptible.sh``: preempted by a job in a higher-priority partition (SLURM's
  SIGTERM to every task, between log lines), resubmitted, cancelled with ``scancel`` (the
  chain stops, the checkpoint kept), submitted again, finished with the uninterrupted run's
  weights.
"""
import os
import os.path as osp
import re
import sys
import time

import pytest
import torch

from helpers import (REPO, clean_env, hooked_config, read_checkpoint, read_progress,
                     pythonpath_with_tests, tiny_run_options)
from slurm_cluster import SlurmCluster, install_packages

EPOCHS = 3  # 8 images, 2 tasks x batch 1: 4 iterations an epoch, 12 in all
TASKS = ['-n', '2', '--ntasks-per-node=2', '--cpus-per-task=1']


@pytest.fixture(scope='module')
def cluster(tmp_path_factory):
    why = install_packages()
    if why:
        pytest.skip(f'no SLURM on this machine: {why}')
    root = tmp_path_factory.mktemp('slurm')
    cluster = SlurmCluster(str(root / 'cluster'), grace_s=120, kill_wait_s=60).start()
    yield cluster
    cluster.stop()


@pytest.fixture(scope='module')
def setup(cluster, tiny_synthetic_data, tmp_path_factory):
    root = tmp_path_factory.mktemp('slurm_runs')
    config = hooked_config(root / 'slow.py', "dict(type='RankWeightsHook')",
                           "dict(type='ProgressHook', delay_s=1.0)")
    env = clean_env(dict(cluster.env, OMP_NUM_THREADS='1', PYTHON=sys.executable,
                         PYTHONPATH=pythonpath_with_tests()))
    args = ['--batch-size', '1', '--seed', '0', '--deterministic', '--cfg-options',
            *tiny_run_options(tiny_synthetic_data, epochs=EPOCHS),
            'default_hooks.logger.interval=5']
    return dict(root=root, config=config, env=env, args=args)


@pytest.fixture(scope='module')
def reference(cluster, setup):
    """tools/slurm_train.sh, 2 tasks on the CPU partition, uninterrupted."""
    work_dir = str(setup['root'] / 'reference')
    env = dict(setup['env'], GPUS='2', GPUS_PER_NODE='0', CPUS_PER_TASK='1')
    proc = cluster.run(['bash', 'tools/slurm_train.sh', 'cpu', 'reference', setup['config'],
                        work_dir, *setup['args']], cwd=REPO, env=env, timeout=600)
    return dict(work_dir=work_dir, rc=proc.returncode, log=proc.stdout + proc.stderr)


def test_slurm_train_on_a_cpu_partition(reference):
    log = reference['log']
    assert reference['rc'] == 0, log[-4000:]
    # printed once and logged once (rank 0 alone), besides the config's copy in the log
    assert len(re.findall(r'^launcher: slurm, 2 processes, backend gloo', log, re.M)) == 1
    assert len(re.findall(r'INFO - launcher: slurm, 2 processes', log)) == 1
    assert '--gres' not in log and 'Invalid generic resource' not in log
    ckpt = read_checkpoint(osp.join(reference['work_dir'], f'epoch_{EPOCHS}.pth'))
    assert ckpt['meta']['iter'] == 4 * EPOCHS


def test_slurm_train_refuses_more_cpus_than_the_partition_has(cluster, setup):
    env = dict(setup['env'], GPUS='2', GPUS_PER_NODE='0', CPUS_PER_TASK='64')
    proc = cluster.run(['bash', 'tools/slurm_train.sh', 'cpu', 'big', setup['config'],
                        str(setup['root'] / 'big')], cwd=REPO, env=env)
    assert proc.returncode == 2
    [line] = proc.stderr.strip().splitlines()
    assert 'partition cpu has at most' in line and 'CPUS_PER_TASK=64' in line
    assert not [j for j in cluster.jobs() if j.get('JobName') == 'big']  # nothing queued


def _wait(predicate, timeout, what, cluster):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f'{what}: not within {timeout} s\n'
                         f'{[(j["JobId"], j["JobState"]) for j in cluster.jobs()]}')


def _output(path):
    return open(path).read() if osp.exists(path) else ''


@pytest.fixture(scope='module')
def chain(cluster, setup, reference):
    """Job A preempted by an urgent job, its resubmission B cancelled with scancel, then C
    submitted by hand to the end."""
    root, work_dir = setup['root'], str(setup['root'] / 'chain')
    os.makedirs(work_dir)
    out = dict(work_dir=work_dir)
    sbatch_args = ['-p', 'cpu', *TASKS, '--gres=none']
    env = dict(setup['env'], SBATCH_ARGS=' '.join(sbatch_args))

    def submit():
        proc = cluster.run(['sbatch', '--parsable', *sbatch_args,
                            f'--output={work_dir}/slurm-%x-%j.out',
                            'tools/sbatch_preemptible.sh', setup['config'], work_dir,
                            *setup['args']], cwd=REPO, env=env)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.strip().split(';')[0]

    def log_of(job):
        return _output(osp.join(work_dir, f'slurm-dino-dinov2-{job}.out'))

    def job_after(job):
        later = [j['JobId'] for j in cluster.jobs()
                 if j.get('JobName') == 'dino-dinov2' and int(j['JobId']) > int(job)]
        return later[0] if later else None

    # A: preempted by a job of the higher-priority partition, after iteration 2
    a = submit()
    _wait(lambda: read_progress(work_dir) >= 2, 300, 'job A reaching iteration 2', cluster)
    urgent = cluster.run(['sbatch', '--parsable', '-p', 'urgent', '-n', '2',
                          '--cpus-per-task=1', '--wrap', 'sleep 2'], env=env)
    assert urgent.returncode == 0, urgent.stderr
    out['a'] = cluster.wait_job(a, 300)
    out['a_log'] = log_of(a)
    out['a_checkpoint'] = open(osp.join(work_dir, 'last_checkpoint')).read().strip()

    # B: the resubmission; cancelled once it trained one more iteration
    b = _wait(lambda: job_after(a), 60, 'the resubmission of job A', cluster)
    resumed_at = read_checkpoint(out['a_checkpoint'])['meta']['iter']
    _wait(lambda: read_progress(work_dir) > resumed_at, 300, 'job B training', cluster)
    cluster.run(['scancel', b])
    out['b'] = cluster.wait_job(b, 300)
    out['b_log'] = log_of(b)
    out['b_checkpoint'] = open(osp.join(work_dir, 'last_checkpoint')).read().strip()
    time.sleep(2)
    out['after_b'] = job_after(b)  # none: the chain stopped

    # C: submitted again by hand; finishes
    c = submit()
    out['c'] = cluster.wait_job(c, 600)
    out['c_log'] = log_of(c)
    out['resubmitted_after_c'] = job_after(c)
    return out


def test_preemption_saves_on_every_task_and_resubmits(chain):
    log = chain['a_log']
    assert chain['a']['JobState'] == 'COMPLETED', log[-4000:]
    assert 'Preempted by SIGTERM' in log
    assert re.search(r'tasks? 0-1: Exited with exit code 75|task 0: Exited with exit code 75',
                     log), log[-4000:]
    ckpt = read_checkpoint(chain['a_checkpoint'])
    assert len(ckpt['preemption']['rng_states']) == 2
    assert f'checkpoint {chain["a_checkpoint"]}; resubmitting' in log


def test_scancel_stops_the_chain_keeping_the_checkpoint(chain):
    log = chain['b_log']
    assert 'job cancelled' in log and 'not resubmitting' in log, log[-4000:]
    assert chain['after_b'] is None
    a_iter = read_checkpoint(chain['a_checkpoint'])['meta']['iter']
    b_iter = read_checkpoint(chain['b_checkpoint'])['meta']['iter']
    assert a_iter < b_iter < 4 * EPOCHS
    assert f'resumed epoch: {(a_iter - 1) // 4}, iter: {a_iter}' in log


def test_the_chain_ends_with_the_uninterrupted_weights(chain, reference):
    assert chain['c']['JobState'] == 'COMPLETED', chain['c_log'][-4000:]
    assert '[sbatch_preemptible] training finished' in chain['c_log']
    assert chain['resubmitted_after_c'] is None
    ref = read_checkpoint(osp.join(reference['work_dir'], f'epoch_{EPOCHS}.pth'))
    got = read_checkpoint(osp.join(chain['work_dir'], f'epoch_{EPOCHS}.pth'))
    for key, value in ref['state_dict'].items():
        torch.testing.assert_close(got['state_dict'][key], value, rtol=0, atol=0, msg=key)
