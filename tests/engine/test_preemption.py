"""SIGTERM/SIGUSR1 -> checkpoint at the current iteration, exit 75, exact resume."""
import os
import os.path as osp
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

from helpers import (REPO, SYNTHETIC_CONFIG, clean_env, free_port, load_tool,
                     open_without_the_plugin, read_checkpoint, read_scalars, tiny_run_options,
                     wait_for_iteration)
from projects.dino_dinov2.engine import PREEMPTED_EXIT_CODE, PreemptionHook
from projects.dino_dinov2.engine.hooks.preemption_hook import get_rng_state, set_rng_state
from projects.dino_dinov2.upstream.loops import SkipFirstBatches

LOSS_KEYS = ('loss', 'loss_cls', 'loss_bbox', 'loss_iou', 'dn_loss_cls', 'enc_loss_cls')
ITERS = 8  # 2 epochs of 4 iterations


def _checkpoint_of(run):
    last = run['last_checkpoint'].strip()  # what last_checkpoint said after the signal
    return last, read_checkpoint(last, map_location='cpu')


def test_exit_code_is_documented():
    assert PREEMPTED_EXIT_CODE == 75
    assert load_tool('train').PREEMPTED_EXIT_CODE == PREEMPTED_EXIT_CODE  # its start-up's
    doc = open(osp.join(REPO, 'docs', 'launching.md')).read()
    assert '75' in doc and 'SIGTERM' in doc


def test_sigterm_writes_a_checkpoint_at_that_iteration(preempted_runs):
    run = preempted_runs['preempted']
    assert run['returncode'] == PREEMPTED_EXIT_CODE, run['log'][-3000:]
    assert 'Preempted by SIGTERM' in run['log']
    rows = read_scalars(run['work_dir'])
    # the iterations before the resume: rows of the first run only
    stopped = int(re.search(r'iter_(\d+)\.pth \(iteration (\d+)\)', run['log']).group(1))
    assert run['signalled_after'] <= stopped < ITERS
    last, ckpt = _checkpoint_of(run)
    assert osp.basename(last) == f'iter_{stopped}.pth'
    assert ckpt['meta']['iter'] == stopped
    assert ckpt['meta']['epoch'] == (stopped - 1) // 4  # the epoch it was in
    # a normal mmengine checkpoint: model, optimizer, schedulers, message hub
    assert {'state_dict', 'optimizer', 'param_schedulers', 'message_hub'} <= set(ckpt)
    assert len(ckpt['message_hub']['log_scalars']['train/loss']['log_history']) >= stopped
    # and what resumes it exactly: the RNG states of the one process
    assert len(ckpt['preemption']['rng_states']) == 1
    proc = open_without_the_plugin([last])  # torch's own safe loader, nothing installed
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert ckpt['preemption']['signal'] == signal.SIGTERM
    assert min(rows) == 1 and stopped in rows


def test_resume_continues_like_an_uninterrupted_run(preempted_runs):
    ref, pre, res = (preempted_runs[k] for k in ('reference', 'preempted', 'resumed'))
    assert ref['returncode'] == 0, ref['log'][-3000:]
    assert res['returncode'] == 0, res['log'][-3000:]
    stopped = int(re.search(r'iter_(\d+)\.pth', pre['log']).group(1))
    assert f'resumed epoch: {(stopped - 1) // 4}, iter: {stopped}' in res['log']
    expected = read_scalars(ref['work_dir'])
    got = read_scalars(res['work_dir'])  # preempted run's rows, then the resumed run's
    assert sorted(expected) == sorted(got) == list(range(1, ITERS + 1))
    for it in range(1, ITERS + 1):
        for key in LOSS_KEYS:
            assert got[it][key] == expected[it][key], (it, key, got[it][key],
                                                       expected[it][key])
        assert got[it]['lr'] == expected[it]['lr']
    final = read_checkpoint(osp.join(res['work_dir'], 'epoch_2.pth'), map_location='cpu')
    final_ref = read_checkpoint(osp.join(ref['work_dir'], 'epoch_2.pth'), map_location='cpu')
    for k, v in final_ref['state_dict'].items():
        torch.testing.assert_close(final['state_dict'][k], v, rtol=0, atol=0, msg=k)


def test_preemption_hook_is_registered():
    from mmdet.registry import HOOKS
    hook = HOOKS.build(dict(type='PreemptionHook', signals=['SIGUSR1']))
    assert isinstance(hook, PreemptionHook) and hook.signals == [signal.SIGUSR1]
    with pytest.raises(ValueError, match='SIGNOPE'):
        PreemptionHook(signals=['SIGNOPE'])


def test_skip_first_batches_draws_the_same_batches():
    from torch.utils.data import BatchSampler, RandomSampler
    g = torch.Generator().manual_seed(3)
    full = list(BatchSampler(RandomSampler(range(10), generator=g), 3, False))
    g.manual_seed(3)
    calls = []
    skipped = SkipFirstBatches(BatchSampler(RandomSampler(range(10), generator=g), 3, False),
                               2, on_start=lambda: calls.append(1))
    assert len(skipped) == 4  # the whole pass: what follows keeps its place in it
    assert list(skipped) == full[2:] and calls == [1]


def test_rng_state_round_trip():
    state = get_rng_state()
    a = (torch.rand(3), __import__('numpy').random.rand(3), __import__('random').random())
    set_rng_state(state)
    b = (torch.rand(3), __import__('numpy').random.rand(3), __import__('random').random())
    assert torch.equal(a[0], b[0]) and (a[1] == b[1]).all() and a[2] == b[2]


FAKE_SRUN = r'''#!/usr/bin/env bash
# Stand-in for srun (one task): drop srun's options, set the job step's variables, run.
while [ $# -gt 0 ] && [ "${1#-}" != "$1" ]; do shift; done
export SLURM_PROCID=0 SLURM_LOCALID=0 SLURM_NTASKS=1 SLURM_STEP_ID=0
export SLURM_STEP_NODELIST=localhost SLURM_JOB_NODELIST=localhost
exec "$@"
'''
FAKE_SBATCH = r'''#!/usr/bin/env bash
# Stand-in for sbatch: record the resubmission.
printf '%s\n' "$@" > "$SBATCH_CALLS"
echo "Submitted batch job 43"
'''


def test_sbatch_script_forwards_the_signal_and_resubmits(tiny_synthetic_data, tmp_path):
    """The batch shell gets SIGUSR1 (``--signal=B:USR1@120``): the training checkpoints,
    exits 75, and the script submits itself again with the same arguments."""
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir()
    for name, text in (('srun', FAKE_SRUN), ('sbatch', FAKE_SBATCH)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    work_dir = str(tmp_path / 'work')
    calls = tmp_path / 'sbatch_calls.txt'
    env = clean_env(dict(PATH=f'{bin_dir}{os.pathsep}{os.environ["PATH"]}',
                         SLURM_JOB_ID='42', SLURM_SUBMIT_DIR=REPO, PYTHON=sys.executable,
                         SBATCH_CALLS=str(calls), MASTER_PORT=str(free_port())))
    args = [SYNTHETIC_CONFIG, work_dir, '--batch-size', '2', '--cfg-options',
            *tiny_run_options(tiny_synthetic_data, epochs=2)]
    log_path = tmp_path / 'job.log'
    with open(log_path, 'w') as log:
        # a new session, as slurmstepd runs the batch script: the signal goes to the shell
        proc = subprocess.Popen(['bash', 'tools/sbatch_preemptible.sh', *args], cwd=REPO,
                                env=env, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            wait_for_iteration(work_dir, 1, proc)
            proc.send_signal(signal.SIGUSR1)
            rc = proc.wait(timeout=600)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    log = log_path.read_text()
    assert rc == 0, log[-3000:]
    assert 'got SIGUSR1: asking the training tasks for a checkpoint' in log, log[-3000:]
    assert 'Preempted by SIGUSR1' in log and 'preempted (exit 75)' in log, log[-3000:]
    last = open(osp.join(work_dir, 'last_checkpoint')).read().strip()
    assert re.fullmatch(r'iter_\d+\.pth', osp.basename(last)) and osp.isfile(last)
    # the slurm launcher ran for real: a one-task job step
    assert 'Distributed launcher: slurm' in log
    assert calls.read_text().splitlines() == [
        '--export=ALL,RESUBMIT_COUNT=1,NO_PROGRESS_COUNT=0',
        f'--output={work_dir}/slurm-%x-%j.out', 'tools/sbatch_preemptible.sh', *args]


def _catches(pid: int, signum: int) -> bool:
    """Whether process ``pid`` has a handler for ``signum`` (``SigCgt`` in /proc)."""
    try:
        with open(f'/proc/{pid}/status') as f:
            mask = next(int(line.split()[1], 16) for line in f if line.startswith('SigCgt'))
    except (OSError, StopIteration):
        return False
    return bool(mask >> (signum - 1) & 1)


@pytest.mark.skipif(not osp.exists('/proc/self/status'), reason='reads /proc')
def test_a_signal_during_the_start_up_exits_75(tiny_synthetic_data, tmp_path):
    """A preemption while the tool still imports and builds: nothing to save, exit 75 (not
    death by the signal, which a job script would take for a crash)."""
    proc = subprocess.Popen([sys.executable, 'tools/train.py', SYNTHETIC_CONFIG, '--work-dir',
                             str(tmp_path / 'work'), '--cfg-options',
                             *tiny_run_options(tiny_synthetic_data, epochs=1)],
                            cwd=REPO, env=clean_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 60
        while not _catches(proc.pid, signal.SIGUSR1) and time.time() < deadline:
            time.sleep(0.01)
        proc.send_signal(signal.SIGUSR1)  # the imports take seconds: still starting
        out, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == PREEMPTED_EXIT_CODE, err[-3000:]
    assert 'Stopped by SIGUSR1 while not training: nothing to save' in err
    assert not osp.exists(tmp_path / 'work' / 'last_checkpoint')


def _interrupted_run(work_dir, data, presses):
    """tools/train.py as preempted_runs trains it, with Ctrl-C (SIGINT) pressed once
    iteration 1 is logged, and again (``presses=2``) once the first was acknowledged;
    returns (exit status, output)."""
    import threading
    proc = subprocess.Popen([sys.executable, 'tools/train.py', SYNTHETIC_CONFIG, '--seed', '0',
                             '--deterministic', '--batch-size', '2', '--work-dir', work_dir,
                             '--cfg-options', *tiny_run_options(data, epochs=2)],
                            cwd=REPO, env=clean_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    lines, acknowledged = [], threading.Event()

    def read():
        for line in proc.stdout:
            lines.append(line)
            if line.startswith('Ctrl-C: finishing'):
                acknowledged.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        wait_for_iteration(work_dir, 1, proc)
        proc.send_signal(signal.SIGINT)
        if presses == 2:
            assert acknowledged.wait(60), ''.join(lines)[-3000:]
            proc.send_signal(signal.SIGINT)
        proc.wait(timeout=300)
        reader.join(60)
    finally:
        if proc.poll() is None:
            proc.kill()
    return proc.returncode, ''.join(lines)


def test_ctrl_c_saves_exits_130_and_resumes_to_the_same_weights(preempted_runs,
                                                                 tiny_synthetic_data, tmp_path):
    work_dir = str(tmp_path / 'interrupted')
    rc, out = _interrupted_run(work_dir, tiny_synthetic_data, presses=1)
    assert rc == 130, out[-3000:]
    assert 'Ctrl-C: finishing this iteration, then saving a checkpoint' in out
    assert re.search(r'Interrupted by SIGINT \(Ctrl-C\): saved \S+iter_\d+\.pth', out)
    assert 'Traceback' not in out and 'KeyboardInterrupt' not in out
    proc = subprocess.run([sys.executable, 'tools/train.py', SYNTHETIC_CONFIG, '--seed', '0',
                           '--deterministic', '--batch-size', '2', '--work-dir', work_dir,
                           '--resume', '--cfg-options',
                           *tiny_run_options(tiny_synthetic_data, epochs=2)],
                          cwd=REPO, env=clean_env(), capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ref = read_checkpoint(osp.join(preempted_runs['reference']['work_dir'], 'epoch_2.pth'))
    got = read_checkpoint(osp.join(work_dir, 'epoch_2.pth'))
    for k, v in ref['state_dict'].items():
        torch.testing.assert_close(got['state_dict'][k], v, rtol=0, atol=0, msg=k)


def test_a_second_ctrl_c_aborts_without_saving(tiny_synthetic_data, tmp_path):
    rc, out = _interrupted_run(str(tmp_path / 'aborted'), tiny_synthetic_data, presses=2)
    assert rc == 130, out[-3000:]
    assert 'Ctrl-C again: aborting without saving' in out
    assert 'Traceback' not in out
