"""mmdet's own tools/train.py and tools/test.py run the synthetic config unchanged, and a
run of mmdet's train.py is preemption-safe (the hook is in the runtime _base_ config)."""
import os.path as osp
import signal
import subprocess
import sys

import mmdet
import pytest

from helpers import (REPO, SYNTHETIC_CONFIG, clean_env, data_cfg_options, read_checkpoint, run_tool,
                     tiny_run_options, wait_for_iteration)
from projects.dino_dinov2.engine import PREEMPTED_EXIT_CODE

MMDET_TOOLS = osp.join(osp.dirname(mmdet.__file__), '.mim', 'tools')


def test_mmdet_ships_its_tools():
    assert osp.isfile(osp.join(MMDET_TOOLS, 'train.py')), MMDET_TOOLS


def test_mmdet_train_preempted_resumed_and_tested(tiny_synthetic_data, tmp_path):
    """mmdet's train.py: SIGTERM after iteration 2 -> a checkpoint at that iteration and
    exit 75; its --resume goes on to the end; its test.py evaluates the result."""
    if not osp.isfile(osp.join(MMDET_TOOLS, 'train.py')):
        pytest.fail(f'mmdet installed without its tools: {MMDET_TOOLS}')
    work_dir = str(tmp_path)
    options = [*tiny_run_options(tiny_synthetic_data, epochs=2),
               'train_dataloader.batch_size=2']  # 4 iterations an epoch
    train = [sys.executable, osp.join(MMDET_TOOLS, 'train.py'), SYNTHETIC_CONFIG,
             '--work-dir', work_dir]
    log = open(tmp_path / 'preempted.log', 'w')
    proc = subprocess.Popen([*train, '--cfg-options', *options], cwd=REPO,
                            env=clean_env({'OMP_NUM_THREADS': '1'}), stdout=log,
                            stderr=subprocess.STDOUT)
    wait_for_iteration(work_dir, 2, proc)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=300) == PREEMPTED_EXIT_CODE, open(log.name).read()[-3000:]
    log.close()
    last = open(osp.join(work_dir, 'last_checkpoint')).read().strip()
    ckpt = read_checkpoint(last, map_location='cpu')
    assert 2 <= ckpt['meta']['iter'] < 8 and 'preemption' in ckpt
    assert osp.basename(last) == f'iter_{ckpt["meta"]["iter"]}.pth'

    proc = run_tool([*train, '--resume', '--cfg-options', *options],
                    env={'OMP_NUM_THREADS': '1'})
    assert f'resumed epoch: {(ckpt["meta"]["iter"] - 1) // 4}, iter: {ckpt["meta"]["iter"]}' \
        in proc.stdout + proc.stderr
    assert read_checkpoint(osp.join(work_dir, 'epoch_2.pth'))['meta']['iter'] == 8
    proc = run_tool([sys.executable, osp.join(MMDET_TOOLS, 'test.py'), SYNTHETIC_CONFIG,
                     osp.join(work_dir, 'epoch_2.pth'), '--work-dir', work_dir,
                     '--cfg-options', *data_cfg_options(tiny_synthetic_data),
                     *[o for o in options if o.startswith('model.')]])
    assert 'coco/bbox_mAP:' in proc.stdout + proc.stderr
