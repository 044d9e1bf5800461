"""The project's hooks on mmengine's toy runner (``RunnerTestCase``): in this process, no
tool and no detector; the tool-level tests (NaN runs, preemption by signal, kills
mid-write) are elsewhere."""
import os
import os.path as osp

import torch
from mmengine.registry import MODELS
from mmengine.testing import RunnerTestCase
from mmengine.testing.runner_test_case import ToyModel

import projects.dino_dinov2  # noqa: F401  (registers the hooks)
from projects.dino_dinov2.checkpoint import read_last_checkpoint
from projects.dino_dinov2.engine import NonFiniteLossError
from projects.dino_dinov2.checkpoint import check_checkpoint_file


class NanAtIterationModel(ToyModel):
    """The toy model whose loss is NaN from its ``nan_at``-th training step (1-based)."""

    def __init__(self, nan_at: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.nan_at, self.steps = nan_at, 0

    def forward(self, inputs, data_samples=None, mode='tensor'):
        out = super().forward(inputs, data_samples, mode)
        if mode == 'loss':
            self.steps += 1
            if self.nan_at and self.steps >= self.nan_at:
                out['loss'] = out['loss'] * torch.tensor(float('nan'))
        return out


class TestHooks(RunnerTestCase):

    def setUp(self):
        super().setUp()
        MODELS.register_module(module=NanAtIterationModel, force=True)
        cfg = self.iter_based_cfg
        cfg.default_hooks.checkpoint = dict(type='AtomicCheckpointHook', interval=2,
                                            by_epoch=False, max_keep_ckpts=1)
        cfg.default_hooks.nan_guard = dict(type='NanGuardHook')
        cfg.train_cfg = dict(by_epoch=False, max_iters=6, val_interval=100)

    def tearDown(self):
        MODELS.module_dict.pop('NanAtIterationModel', None)
        super().tearDown()

    def test_atomic_checkpoints_keep_one_complete_checkpoint(self):
        runner = self.build_runner(self.iter_based_cfg)
        runner.train()
        work_dir = runner.work_dir
        assert read_last_checkpoint(work_dir) == osp.join(work_dir, 'iter_6.pth')
        check_checkpoint_file(osp.join(work_dir, 'iter_6.pth'))
        names = os.listdir(work_dir)
        assert [n for n in names if n.endswith('.pth')] == ['iter_6.pth']  # max_keep 1
        assert not [n for n in names if '.tmp-' in n]

    def test_nan_guard_stops_before_saving_and_names_the_last_good_checkpoint(self):
        cfg = self.iter_based_cfg
        cfg.model = dict(type='NanAtIterationModel', nan_at=5)
        runner = self.build_runner(cfg)
        with self.assertRaises(NonFiniteLossError) as e:
            runner.train()
        message = str(e.exception)
        assert 'non-finite loss at iteration 5' in message, message
        assert 'iter_4.pth' in message, message
        assert read_last_checkpoint(runner.work_dir) == osp.join(runner.work_dir, 'iter_4.pth')
        assert not osp.exists(osp.join(runner.work_dir, 'iter_6.pth'))

    def test_run_info_and_batch_lr_lines_reach_the_log(self):
        cfg = self.iter_based_cfg
        cfg.custom_hooks = [dict(type='RunInfoHook', lines=['data: toy, 12 samples']),
                            dict(type='BatchLrLoggerHook', base_batch=3, base_lr=0.1)]
        runner = self.build_runner(cfg)
        runner.train()
        log = open(osp.join(runner.log_dir, f'{runner.timestamp}.log')).read()
        assert 'data: toy, 12 samples' in log
        assert 'effective total batch 3 (3 per process x 1 process)' in log
        assert 'param group lr 1.000e-01' in log
