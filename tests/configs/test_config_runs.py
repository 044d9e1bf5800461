"""Every config in configs/ (and the measurement config of tools/analysis_tools/) trains,
validates, checkpoints, resumes and tests for real.

One parametrized case per file of ``configs/*.py``: a config added later runs here too,
and fails the suite if it cannot. What a run may change is in ``tests/config_runs.py``.
"""
import glob
import os.path as osp

import pytest
import torch

from config_runs import (CONFIGS, SHRINK_MODEL, as_argv, data_options, make_dataset_for,
                         scale_options, schedule_options)
from helpers import load_tool, read_checkpoint

from projects.dino_dinov2 import cli

SIX_AP = ('bbox_mAP', 'bbox_mAP_50', 'bbox_mAP_75', 'bbox_mAP_s', 'bbox_mAP_m', 'bbox_mAP_l')


def _log_text(work_dir: str) -> str:
    return '\n'.join(open(p).read() for p in sorted(glob.glob(osp.join(work_dir, '*', '*.log'))))


@pytest.mark.parametrize('config', CONFIGS, ids=[osp.basename(c) for c in CONFIGS])
def test_config_trains_validates_resumes_and_tests(config, tmp_path, one_torch_thread, capsys):
    cfg = cli.load_config(config)
    data_root = str(tmp_path / 'data')
    counts = make_dataset_for(cfg, data_root)
    shrink = {**data_options(cfg, data_root), **SHRINK_MODEL, **scale_options(cfg)}
    iter_based = 'max_iters' in cfg.train_cfg
    work_dir = str(tmp_path / 'work')
    train, test = load_tool('train'), load_tool('test')

    # 2 iterations, validation, checkpoint
    train.main([config, '--work-dir', work_dir, '--cfg-options',
                *as_argv({**shrink, **schedule_options(cfg, 2)})])
    first = 'iter_2.pth' if iter_based else 'epoch_2.pth'
    ckpt = read_checkpoint(osp.join(work_dir, first), map_location='cpu')
    assert ckpt['meta']['iter'] == 2
    log = _log_text(work_dir)
    batch = cfg.train_dataloader.batch_size
    # the batch comes from the batch sampler where the config has one (the old crash)
    assert f'effective total batch {batch} ({batch} per process x 1 process)' in log
    assert 'schedule: 2 ' in log
    # the built dataset dropped the image without boxes and the crowd-only one
    assert f'{counts["train_dataloader"]["images"]} images' in log
    assert '2 images without boxes (filtered' in log
    for key in SIX_AP:
        assert f'coco/{key}:' in log, key

    # resume from it for 2 more iterations (2 more epochs)
    train.main([config, '--work-dir', work_dir, '--resume', '--cfg-options',
                *as_argv({**shrink, **schedule_options(cfg, 4)})])
    last = 'iter_4.pth' if iter_based else 'epoch_4.pth'
    resumed = read_checkpoint(osp.join(work_dir, last), map_location='cpu')
    assert resumed['meta']['iter'] == 4
    log = _log_text(work_dir)
    assert 'resumed epoch' in log or 'Resuming at iteration 2' in log
    if iter_based:  # the trained batches are skipped at the sampler, not loaded again
        assert 'Resuming at iteration 2: skipped the 2 batches' in log
        assert 'Advance dataloader' not in log
    changed = [k for k, v in ckpt['state_dict'].items()
               if not torch.equal(v, resumed['state_dict'][k])]
    assert changed, 'training after the resume changed no weight'

    # tools/test.py on the last checkpoint, the config's pretrained setting as it is: the
    # backbone's weights come from the checkpoint, nothing is downloaded (none can be here)
    capsys.readouterr()
    as_written = {k: v for k, v in shrink.items() if k != 'model.backbone.pretrained'}
    metrics = test.main([config, osp.join(work_dir, last), '--work-dir',
                         str(tmp_path / 'test'), '--cfg-options', *as_argv(as_written)])
    out = capsys.readouterr().out
    assert 'bbox mAP:' in out
    if cfg.model.backbone.get('pretrained', None):
        assert "model.backbone.pretrained: not loaded (the checkpoint holds" in out
    for key in SIX_AP:
        assert 0.0 <= metrics[f'coco/{key}'] <= 1.0 or metrics[f'coco/{key}'] == -1.0
