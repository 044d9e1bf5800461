"""NaN/Inf loss: the run stops with a message and the iteration, and the last good
checkpoint stays the newest; under a float16 loss scaler the step is skipped instead.

Real training (in this process, tiny model, 8 images, batch 2: 4 iterations an epoch);
the fault is a real NaN loss: a test hook sets the classification loss weight to NaN
for chosen iterations (the Hungarian matching, which has its own costs, is untouched).
"""
import glob
import math
import os.path as osp

import pytest
import torch
from mmengine.hooks import Hook
from mmengine.runner import Runner

from helpers import SYNTHETIC_CONFIG, read_checkpoint, tiny_run_options
from projects.dino_dinov2.cli import load_config
from projects.dino_dinov2.engine import NonFiniteLossError


class NanLossAt(Hook):
    """Makes the loss NaN at the given 1-based iterations (and normal again after)."""
    priority = 'VERY_HIGH'

    def __init__(self, iterations, scaler=False):
        self.iterations = set(iterations)
        self.scaler = scaler
        self.scales = []

    def before_train(self, runner):
        if self.scaler:  # float16's GradScaler, on the CPU
            runner.optim_wrapper.loss_scaler = torch.amp.GradScaler('cpu', init_scale=2.0 ** 8)

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        head = runner.model.bbox_head
        if not hasattr(self, 'weight'):
            self.weight = head.loss_cls.loss_weight
        bad = runner.iter + 1 in self.iterations
        head.loss_cls.loss_weight = float('nan') if bad else self.weight

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        if self.scaler:
            self.scales.append(float(runner.optim_wrapper.loss_scaler.get_scale()))


def _runner(work_dir, data_root, name, *options):
    """A Runner of the synthetic config: tiny model, 3 epochs of 4 iterations."""
    import argparse

    from mmengine.config import DictAction
    parser = argparse.ArgumentParser()
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)
    opts = parser.parse_args([
        '--cfg-options', *tiny_run_options(data_root, epochs=3),
        'default_hooks.checkpoint.interval=1', 'train_dataloader.batch_size=2',
        'randomness.seed=0', *options]).cfg_options
    cfg = load_config(SYNTHETIC_CONFIG, opts)
    cfg.work_dir = str(work_dir)
    cfg.experiment_name = name
    return Runner.from_cfg(cfg)


def _finite(state_dict):
    return all(torch.isfinite(v).all() for v in state_dict.values()
               if torch.is_floating_point(v))


@pytest.mark.parametrize('log_interval', [1, 5])
def test_nan_loss_stops_with_iteration_and_keeps_last_good_checkpoint(
        tiny_synthetic_data, tmp_path, log_interval):
    # log_interval 5: the logged values (and the NaN check) reach the host at iteration 5
    # and at the end of epoch 2 (iteration 8): the NaN of iteration 6 is found there,
    # before epoch 2's checkpoint
    runner = _runner(tmp_path, tiny_synthetic_data, 'nan_stop',
                     f'default_hooks.logger.interval={log_interval}')
    runner.register_hook(NanLossAt({6}))
    with pytest.raises(NonFiniteLossError) as e:
        runner.train()
    good = osp.join(str(tmp_path), 'epoch_1.pth')
    msg = str(e.value)
    assert msg.startswith('non-finite loss at iteration 6 (epoch 2, batch 2): loss=nan, '
                          'loss_cls=nan')
    assert msg.endswith(f'training stopped before saving anything: the last good checkpoint '
                        f'is {good}; continue from it with --resume after fixing the cause '
                        '(lower the lr, check the data, or train in float32/bfloat16)')
    assert '\n' not in msg
    # nothing written after the fault: epoch 1's checkpoint is the newest, and it is good
    assert sorted(osp.basename(p) for p in glob.glob(osp.join(str(tmp_path), '*.pth'))) == [
        'epoch_1.pth']
    assert open(osp.join(str(tmp_path), 'last_checkpoint')).read() == good
    ckpt = read_checkpoint(good, map_location='cpu')
    assert ckpt['meta']['iter'] == 4 and _finite(ckpt['state_dict'])
    # the weights in memory were spoiled by the NaN step: that is why nothing is saved
    assert not _finite(runner.model.state_dict())


def test_nan_found_before_a_checkpoint_between_log_lines(tiny_synthetic_data, tmp_path):
    """A checkpoint due at an iteration without a log line first takes the held values
    to the host: the NaN of iteration 6 stops the run before iter_6.pth is written."""
    runner = _runner(tmp_path, tiny_synthetic_data, 'nan_ckpt',
                     'default_hooks.logger.interval=5', 'default_hooks.checkpoint.by_epoch=False',
                     'default_hooks.checkpoint.interval=3')
    runner.register_hook(NanLossAt({6}))
    with pytest.raises(NonFiniteLossError) as e:
        runner.train()
    assert str(e.value).startswith('non-finite loss at iteration 6 (epoch 2, batch 2)')
    assert sorted(osp.basename(p) for p in glob.glob(osp.join(str(tmp_path), '*.pth'))) == [
        'iter_3.pth']


def test_fp16_loss_scaler_skips_the_step_and_training_goes_on(tiny_synthetic_data, tmp_path):
    runner = _runner(tmp_path, tiny_synthetic_data, 'nan_skip',
                     'optim_wrapper.type=AutoAmpOptimWrapper', 'optim_wrapper.dtype=bfloat16',
                     'train_cfg.max_epochs=2', 'default_hooks.checkpoint.interval=2')
    fault = NanLossAt({6}, scaler=True)
    runner.register_hook(fault)
    runner.train()
    assert fault.scales[4] == 2.0 ** 8 and fault.scales[5] == 2.0 ** 7  # skipped, halved
    ckpt = read_checkpoint(osp.join(str(tmp_path), 'epoch_2.pth'), map_location='cpu')
    assert ckpt['meta']['iter'] == 8 and _finite(ckpt['state_dict'])
    log = open(glob.glob(osp.join(str(tmp_path), '*', '*.log'))[0]).read()
    assert ('Non-finite loss at iteration 6: the float16 loss scaler skipped the step '
            '(scale 256 -> 128; 1 skipped in a row, stop after 20)') in log


def test_fp16_loss_scaler_gives_up_after_max_skipped(tiny_synthetic_data, tmp_path):
    runner = _runner(tmp_path, tiny_synthetic_data, 'nan_give_up',
                     'optim_wrapper.type=AutoAmpOptimWrapper', 'optim_wrapper.dtype=bfloat16',
                     'default_hooks.runtime_info.max_skipped=2')
    runner.register_hook(NanLossAt(range(2, 100), scaler=True))
    with pytest.raises(NonFiniteLossError) as e:
        runner.train()
    assert str(e.value).startswith('non-finite loss at iteration 4 (epoch 1, batch 4) after '
                                   '2 steps skipped by the loss scaler: loss=nan')
    assert 'no checkpoint had been saved yet' in str(e.value)
    assert not glob.glob(osp.join(str(tmp_path), '*.pth'))
    assert _finite(runner.model.state_dict())  # skipped steps changed nothing
    assert not math.isnan(float(runner.optim_wrapper.loss_scaler.get_scale()))
