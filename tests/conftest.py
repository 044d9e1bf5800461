"""Shared fixtures: a tiny synthetic dataset and one short real training run on it."""
import os
import os.path as osp
import subprocess
import sys

import pytest

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
SYNTHETIC_CONFIG = osp.join(REPO, 'configs', 'dino_dinov2_synthetic.py')

if REPO not in sys.path:
    sys.path.insert(0, REPO)


def data_cfg_options(data_root: str) -> list:
    """``--cfg-options`` pointing the synthetic config at another data folder."""
    data_root = data_root.rstrip('/') + '/'
    return [
        f'train_dataloader.dataset.data_root={data_root}',
        f'val_dataloader.dataset.data_root={data_root}',
        f'test_dataloader.dataset.data_root={data_root}',
        f'val_evaluator.ann_file={data_root}annotations/instances_val.json',
        f'test_evaluator.ann_file={data_root}annotations/instances_val.json',
    ]


def run_tool(args, cwd=REPO, env=None, timeout=900, check=True):
    """Run a command-line tool in a fresh process; returns the CompletedProcess."""
    full_env = dict(os.environ, PYTHONUNBUFFERED='1', **(env or {}))
    proc = subprocess.run(args, cwd=cwd, env=full_env, capture_output=True, text=True,
                          timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f'{args} exited {proc.returncode}\n--- stdout\n'
                             f'{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-6000:]}')
    return proc


@pytest.fixture(scope='session')
def synthetic_data(tmp_path_factory):
    """16 train / 8 val synthetic images (128 px, 3 classes) in COCO format."""
    from projects.dino_dinov2.datasets import generate_synthetic_coco
    root = str(tmp_path_factory.mktemp('synthetic'))
    generate_synthetic_coco(root, num_train=16, num_val=8, seed=0, progress=False)
    return root


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
