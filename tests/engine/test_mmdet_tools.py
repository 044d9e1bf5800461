"""mmdet's own tools/train.py and tools/test.py run the synthetic config unchanged."""
import os.path as osp
import sys

import mmdet
import pytest

from conftest import SYNTHETIC_CONFIG, data_cfg_options, run_tool

MMDET_TOOLS = osp.join(osp.dirname(mmdet.__file__), '.mim', 'tools')


def test_mmdet_ships_its_tools():
    assert osp.isfile(osp.join(MMDET_TOOLS, 'train.py')), MMDET_TOOLS


def test_mmdet_train_and_test(synthetic_data, tmp_path):
    if not osp.isfile(osp.join(MMDET_TOOLS, 'train.py')):
        pytest.fail(f'mmdet installed without its tools: {MMDET_TOOLS}')
    work_dir = str(tmp_path)
    run_tool([sys.executable, osp.join(MMDET_TOOLS, 'train.py'), SYNTHETIC_CONFIG,
              '--work-dir', work_dir, '--cfg-options', 'train_cfg.max_epochs=1',
              *data_cfg_options(synthetic_data)])
    assert osp.isfile(osp.join(work_dir, 'epoch_1.pth'))
    proc = run_tool([sys.executable, osp.join(MMDET_TOOLS, 'test.py'), SYNTHETIC_CONFIG,
                     osp.join(work_dir, 'epoch_1.pth'), '--work-dir', work_dir,
                     '--cfg-options', *data_cfg_options(synthetic_data)])
    assert 'coco/bbox_mAP:' in proc.stdout + proc.stderr
