"""Shared fixtures: a tiny synthetic dataset and one short real training run on it.

Helpers the tests import live in ``helpers.py``; this file holds only fixtures."""
import logging
import os
import os.path as osp
import sys

import pytest
import torch

# The Triton kernels (models/triton_deformable_attention.py) run on CPU tensors under
# Triton's interpreter, which must be chosen before Triton is imported (timm, mmengine and
# mmdet import it). A machine with a GPU tests the compiled kernels instead.
if 'TRITON_INTERPRET' not in os.environ and not torch.cuda.is_available():
    os.environ['TRITON_INTERPRET'] = '1'

from helpers import REPO, SYNTHETIC_CONFIG, clean_env, data_cfg_options, run_tool  # noqa: E402

# the package, and the measurement code beside the tools (tools/analysis_tools,
# tools/parity/original_parity.py), for the tests that import them
for _path in (REPO, osp.join(REPO, 'tools'), osp.join(REPO, 'tools', 'parity')):
    if _path not in sys.path:
        sys.path.insert(0, _path)


def _manager_classes():
    from mmengine.utils import ManagerMixin
    found, todo = [], [ManagerMixin]
    while todo:
        cls = todo.pop()
        found.append(cls)
        todo.extend(cls.__subclasses__())
    return found


@pytest.fixture(autouse=True)
def fresh_mmengine_instances():
    """mmengine keeps one logger, message hub and visualizer per experiment name (config
    name + the second the Runner started): a Runner started in the same second as one of
    an earlier test would get that test's logger, whose stream capsys has closed. The
    instances a test creates are dropped (their log files closed) when it ends."""
    before = {cls: set(cls._instance_dict) for cls in _manager_classes()}
    yield
    for cls in _manager_classes():
        for name in set(cls._instance_dict) - before.get(cls, set()):
            instance = cls._instance_dict.pop(name)
            for handler in list(getattr(instance, 'handlers', [])):
                if isinstance(handler, logging.FileHandler):
                    handler.close()


@pytest.fixture
def one_torch_thread():
    """One torch thread per test. Where the 2 cores are shared, OpenMP threads spin-wait
    for each other and a training step takes ten times longer with 2 threads than with
    1; the numbers measured do not matter here, only that the tools work."""
    import torch
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _synthetic(tmp_path_factory, name: str, num_train: int, num_val: int, seed: int) -> str:
    from projects.dino_dinov2.datasets import generate_synthetic_coco
    root = str(tmp_path_factory.mktemp(name))
    generate_synthetic_coco(root, num_train=num_train, num_val=num_val, seed=seed,
                            progress=False)
    return root


@pytest.fixture(scope='session')
def synthetic_data(tmp_path_factory):
    """16 train / 8 val synthetic images (128 px, 3 classes) in COCO format."""
    return _synthetic(tmp_path_factory, 'synthetic', 16, 8, seed=0)


@pytest.fixture(scope='session')
def synthetic_run(synthetic_data, tmp_path_factory):
    """A real 2-epoch run of the synthetic config (tools/train.py); returns its work dir.

    Checkpoints after each epoch, validation after each epoch.
    """
    work_dir = str(tmp_path_factory.mktemp('synthetic_run'))
    run_tool([sys.executable, 'tools/train.py', SYNTHETIC_CONFIG, '--work-dir', work_dir,
              '--cfg-options', 'train_cfg.max_epochs=2', 'train_cfg.val_interval=1',
              'default_hooks.checkpoint.interval=1', 'default_hooks.logger.interval=1',
              'randomness.seed=0', *data_cfg_options(synthetic_data)])
    return work_dir


@pytest.fixture(scope='session')
def tiny_synthetic_data(tmp_path_factory):
    """8 train / 4 val synthetic images: 4 iterations an epoch at batch 2."""
    return _synthetic(tmp_path_factory, 'tiny_synthetic', 8, 4, seed=1)


@pytest.fixture(scope='session')
def preempted_runs(tiny_synthetic_data, tmp_path_factory):
    """One seeded, deterministic 2-epoch training (8 iterations, batch 2) run three ways.

    * ``reference``: uninterrupted, with ``--wandb --wandb-mode online`` and no API key
      (W&B cannot start: training must go on);
    * ``preempted``: W&B offline; SIGTERM once it logged iteration 1 -> checkpoint, exit;
    * ``resumed``: ``--resume`` in the preempted work dir, W&B offline with
      ``--wandb_resume_id`` of the preempted run; it validates after the last epoch.
    Returns their work dirs, exit codes and logs, and the W&B folder.
    """
    import signal
    import subprocess
    import time

    from helpers import isolated_wandb_env, tiny_run_options, wait_for_iteration

    root = tmp_path_factory.mktemp('preempted_runs')
    wandb_dir = str(root / 'wandb')
    base = [sys.executable, 'tools/train.py', SYNTHETIC_CONFIG, '--seed', '0',
            '--deterministic', '--batch-size', '2']
    options = ['--cfg-options', *tiny_run_options(tiny_synthetic_data, epochs=2)]
    out = {'wandb_dir': wandb_dir}

    ref = str(root / 'reference')
    env = clean_env(isolated_wandb_env(str(root / 'wandb_online'), mode='online'))
    proc = subprocess.run(base + ['--work-dir', ref, '--wandb', '--wandb-mode', 'online']
                          + options, cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=900)
    out['reference'] = dict(work_dir=ref, returncode=proc.returncode,
                            log=proc.stdout + proc.stderr)

    pre = str(root / 'preempted')
    env = clean_env(isolated_wandb_env(wandb_dir, mode='offline'))
    log_path = root / 'preempted.log'
    with open(log_path, 'w') as log:
        proc = subprocess.Popen(base + ['--work-dir', pre, '--wandb', '--wandb-mode',
                                        'offline'] + options, cwd=REPO, env=env,
                                stdout=log, stderr=subprocess.STDOUT, text=True)
        try:
            seen = wait_for_iteration(pre, 1, proc)
            t0 = time.time()
            proc.send_signal(signal.SIGTERM)
            rc = proc.wait(timeout=600)
        finally:
            if proc.poll() is None:
                proc.kill()
    last = osp.join(pre, 'last_checkpoint')  # before the resumed run moves it on
    out['preempted'] = dict(work_dir=pre, returncode=rc, log=log_path.read_text(),
                            signalled_after=seen, exit_s=time.time() - t0,
                            last_checkpoint=open(last).read() if osp.isfile(last) else None)

    run_id_file = osp.join(pre, 'wandb_run_id')
    run_id = open(run_id_file).read().strip() if osp.isfile(run_id_file) else 'missing'
    proc = subprocess.run(base + ['--work-dir', pre, '--resume', '--wandb', '--wandb_mode',
                                  'offline', '--wandb_resume_id', run_id, '--cfg-options',
                                  *tiny_run_options(tiny_synthetic_data, epochs=2, val=True)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    out['resumed'] = dict(work_dir=pre, returncode=proc.returncode,
                          log=proc.stdout + proc.stderr, run_id=run_id)
    return out
