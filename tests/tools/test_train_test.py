"""train -> evaluate -> resume on the synthetic config, with real processes and files."""
import copy
import glob
import os.path as osp
import shutil
import sys

import pytest
import torch
from mmengine.hooks import Hook
from mmengine.runner import Runner

from helpers import (SYNTHETIC_CONFIG, data_cfg_options, load_tool, open_without_the_plugin,
                     read_checkpoint, run_tool)
from projects.dino_dinov2 import cli

ITERS_PER_EPOCH = 4  # 16 images, batch 4


def test_training_writes_checkpoints_logs_and_metrics(synthetic_run):
    assert open(osp.join(synthetic_run, 'last_checkpoint')).read().strip().endswith(
        'epoch_2.pth')
    ckpt = read_checkpoint(osp.join(synthetic_run, 'epoch_2.pth'), map_location='cpu')
    assert ckpt['meta']['epoch'] == 2 and ckpt['meta']['iter'] == 2 * ITERS_PER_EPOCH
    scalars = glob.glob(osp.join(synthetic_run, '*', 'vis_data', 'scalars.json'))
    assert scalars
    text = open(scalars[0]).read()
    assert '"coco/bbox_mAP"' in text and '"loss"' in text


def test_test_tool_prints_bbox_map(synthetic_run, synthetic_data, tmp_path):
    out = tmp_path / 'preds.pkl'
    proc = run_tool([sys.executable, 'tools/test.py', SYNTHETIC_CONFIG,
                     osp.join(synthetic_run, 'epoch_2.pth'), '--work-dir', str(tmp_path),
                     '--out', str(out), '--cfg-options', *data_cfg_options(synthetic_data)])
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith('bbox mAP:')]
    assert line, proc.stdout[-2000:]
    assert 0.0 <= float(line[0].split(':')[1]) <= 1.0
    assert out.stat().st_size > 0


def test_checkpoints_open_with_torch_and_mmdet_alone(synthetic_run, synthetic_data):
    """Every checkpoint the run wrote (each epoch's, the best) opens with torch's safe
    loader and mmdet's init_detector / inference_detector / DetInferencer, nothing
    installed (torch >= 2.6 refused mmengine's message-hub objects: the checkpoints hold
    plain types)."""
    paths = sorted(glob.glob(osp.join(synthetic_run, '*.pth')))
    assert len(paths) == 3 and any('best_coco_bbox_mAP' in p for p in paths)
    image = sorted(glob.glob(osp.join(synthetic_data, 'val', '*')))[0]
    proc = open_without_the_plugin(paths, SYNTHETIC_CONFIG, image)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("('circle', 'square', 'triangle')") == 3, proc.stdout
    assert proc.stdout.count('DetInferencer') == 3, proc.stdout


class CaptureAtStart(Hook):
    """Records the state the train loop starts from (after resume)."""

    def before_train(self, runner):
        self.iter, self.epoch = runner.iter, runner.epoch
        self.model = {k: v.clone() for k, v in runner.model.state_dict().items()}
        self.optimizer = copy.deepcopy(runner.optim_wrapper.state_dict())
        self.schedulers = copy.deepcopy([s.state_dict() for s in runner.param_schedulers])
        self.loss_history = runner.message_hub.get_scalar('train/loss').data[0].copy()


def test_resume_continues_with_same_state(synthetic_run, synthetic_data, tmp_path):
    work_dir = str(tmp_path / 'resumed')
    shutil.copytree(synthetic_run, work_dir)
    cfg = cli.load_config(SYNTHETIC_CONFIG)
    cfg.merge_from_dict(dict(
        work_dir=work_dir, train_cfg=dict(max_epochs=3, val_interval=3),
        default_hooks=dict(checkpoint=dict(interval=1), logger=dict(interval=1))))
    for opt in data_cfg_options(synthetic_data):
        key, value = opt.split('=', 1)
        cfg.merge_from_dict({key: value})
    cli.set_resume(cfg, 'auto')  # the latest checkpoint of the work dir: epoch_2
    runner = Runner.from_cfg(cfg)
    capture = CaptureAtStart()
    runner.register_hook(capture, priority='LOWEST')
    runner.train()

    ckpt = read_checkpoint(osp.join(synthetic_run, 'epoch_2.pth'), map_location='cpu')
    assert (capture.epoch, capture.iter) == (2, 2 * ITERS_PER_EPOCH)
    for k, v in ckpt['state_dict'].items():
        torch.testing.assert_close(capture.model[k], v, rtol=0, atol=0, msg=k)
    saved_opt = ckpt['optimizer']
    assert capture.optimizer['param_groups'] == saved_opt['param_groups']
    for pid, state in saved_opt['state'].items():
        for name, t in state.items():
            torch.testing.assert_close(capture.optimizer['state'][pid][name], t)
    assert capture.schedulers == ckpt['param_schedulers']
    saved_loss = ckpt['message_hub']['log_scalars']['train/loss']
    assert capture.loss_history.tolist() == saved_loss['log_history']  # plain types
    # and the run went on to the end: epoch 3, 12 iterations in all
    last = read_checkpoint(osp.join(work_dir, 'epoch_3.pth'), map_location='cpu')
    assert (last['meta']['epoch'], last['meta']['iter']) == (3, 3 * ITERS_PER_EPOCH)


@pytest.mark.parametrize('written', ['now', 'before'])
def test_resume_cli_from_path(synthetic_run, synthetic_data, tmp_path, written):
    """--resume PATH, from a checkpoint as the project writes it, and from one written
    before it wrote plain types (mmengine's HistoryBuffer objects and numpy scalars in the
    message hub: read with mmengine's classes allowed)."""
    path = osp.join(synthetic_run, 'epoch_1.pth')
    if written == 'before':
        import numpy as np

        from projects.dino_dinov2.upstream.torch_load import restore_message_hub
        ckpt = torch.load(path, map_location='cpu', weights_only=True)
        restore_message_hub(ckpt['message_hub'])
        ckpt['message_hub']['runtime_info']['eta'] = np.float64(1.5)
        path = str(tmp_path / 'epoch_1.pth')
        torch.save(ckpt, path)
        proc = open_without_the_plugin([path])
        assert proc.returncode != 0 and 'HistoryBuffer' in proc.stderr  # the old format
    load_tool('train').main([SYNTHETIC_CONFIG, '--work-dir', str(tmp_path / 'work'),
                             '--resume', path, '--cfg-options', 'train_cfg.max_epochs=2',
                             'train_cfg.val_interval=5', *data_cfg_options(synthetic_data)])
    log = open(glob.glob(str(tmp_path / 'work' / '*' / '*.log'))[0]).read()
    assert 'resumed epoch: 1, iter: 4' in log and 'is not HistoryBuffer' not in log
    assert osp.isfile(tmp_path / 'work' / 'epoch_2.pth')


def test_missing_resume_file_is_an_error(synthetic_data, tmp_path):
    proc = run_tool([sys.executable, 'tools/train.py', SYNTHETIC_CONFIG, '--work-dir',
                     str(tmp_path), '--resume', str(tmp_path / 'nope.pth'),
                     '--cfg-options', *data_cfg_options(synthetic_data)], check=False)
    assert proc.returncode != 0
    assert 'checkpoint not found' in proc.stderr and 'nope.pth' in proc.stderr
