"""Fine-tuning as the peers do it: EMA (the weights validated, both kept, resumed), the best
checkpoint and early stopping across --resume, YOLO folders through --data-root, --aug small.

The runs are real tools/train.py runs (in this process) of the tiny synthetic model. Where
the bookkeeping of the best checkpoint and of early stopping is tested, the validation
score is scripted by epoch (:class:`ScriptedMetric`): what is under test is which file is
kept and when the run stops for a given sequence of scores, which a real mAP of a tiny
model (often 0.0) cannot set up.
"""
import glob
import json
import os.path as osp

import numpy as np
import pytest
import torch
from mmengine.evaluator import BaseMetric
from mmengine.hooks import Hook
from mmengine.logging import MessageHub
from torch import nn

from helpers import (SYNTHETIC_CONFIG, TINY_MODEL_OPTIONS, load_tool, open_without_the_plugin,
                     tiny_run_options)
from mmdet.registry import HOOKS, METRICS

VALIDATED = []  # (epoch, sum of a decoder weight) seen by WeightProbeHook at validation


@METRICS.register_module(force=True)
class ScriptedMetric(BaseMetric):
    """``coco/bbox_mAP`` = ``scores[epoch]`` (the epoch the run validates after)."""
    default_prefix = 'coco'

    def __init__(self, scores: dict, ann_file=None, **kwargs):
        super().__init__(**kwargs)  # ann_file: the tiny run's option, not read
        self.scores = {int(k): v for k, v in scores.items()}

    def process(self, data_batch, data_samples):
        self.results.append(1)

    def compute_metrics(self, results):
        epoch = MessageHub.get_current_instance().get_info('epoch') + 1  # 0-based there
        return {'bbox_mAP': self.scores[epoch]}


@HOOKS.register_module(force=True)
class WeightProbeHook(Hook):
    """Records one trained tensor's sum when validation starts (after the EMA swap)."""
    priority = 'LOW'

    def before_val_epoch(self, runner):
        w = runner.model.bbox_head.cls_branches[0].weight
        VALIDATED.append((runner.epoch, float(w.detach().double().sum())))


def _config(tmp_path, scores=None, probe=False) -> str:
    """The synthetic config with a scripted validation score and/or the weight probe."""
    lines = [f"_base_ = '{SYNTHETIC_CONFIG}'"]
    if scores is not None:
        lines.append(f'val_evaluator = dict(_delete_=True, type="ScriptedMetric", '
                     f'scores={json.dumps(scores)})')
    if probe:
        lines.append('custom_hooks = [dict(type="WeightProbeHook")]')
    path = tmp_path / 'config.py'
    path.write_text('\n'.join(lines) + '\n')
    return str(path)


def _train(config, data, work, epochs, *flags):
    options = [o for o in tiny_run_options(data, epochs, val=True)
               if not o.startswith(('train_cfg.val_begin', 'train_cfg.val_interval',
                                    'default_hooks.checkpoint'))]
    load_tool('train').main([config, '--work-dir', work, '--seed', '0', *flags,
                             '--cfg-options', *options, 'train_cfg.val_begin=1',
                             'train_cfg.val_interval=1', 'default_hooks.checkpoint.interval=1',
                             'default_hooks.checkpoint.max_keep_ckpts=5'])


def _log(work) -> str:
    return ''.join(open(p).read() for p in sorted(glob.glob(osp.join(work, '*', '*.log'))))


def _best_files(work):
    return sorted(osp.basename(p) for p in glob.glob(osp.join(work, 'best_*.pth')))


# -- EMA ---------------------------------------------------------------------------------

class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.frozen = nn.Linear(4, 4).requires_grad_(False)
        self.head = nn.Linear(4, 2)
        self.register_buffer('count', torch.zeros(1))


def test_lean_ema_equals_mmdet_exp_momentum_ema_and_shares_frozen_tensors():
    from mmdet.models.layers import ExpMomentumEMA

    from projects.dino_dinov2.models import LeanExpMomentumEMA
    torch.manual_seed(0)
    net = _Net()
    lean = LeanExpMomentumEMA(net, momentum=0.007, gamma=100)
    ref = ExpMomentumEMA(net, momentum=0.007, gamma=100)
    for step in range(5):
        with torch.no_grad():
            net.head.weight.add_(torch.randn_like(net.head.weight))
            net.count += 1
        lean.update_parameters(net)
        ref.update_parameters(net)
    torch.testing.assert_close(lean.module.head.weight, ref.module.head.weight,
                               rtol=1e-6, atol=1e-7)
    assert not torch.equal(lean.module.head.weight, net.head.weight)  # an average
    assert lean.module.frozen.weight is net.frozen.weight  # shared, not copied
    assert lean.module.count.item() == 5 and int(lean.steps) == 5
    assert list(lean.avg_parameters) == ['head.weight', 'head.bias']
    # the step count comes back from a state dict (what --resume loads)
    other = LeanExpMomentumEMA(_Net(), momentum=0.007, gamma=100)
    other.load_state_dict(lean.state_dict())
    assert other._step == 5 and other.momentum_at(5) == lean.momentum_at(5)


def test_ema_cost_counts_the_host_syncs_and_the_copy(capsys):
    from analysis_tools.ema_cost import ema_cost_rows, format_rows
    rows = ema_cost_rows(_Net(), repeats=1)
    mmdet, lean = rows
    assert mmdet['syncs'] > 0 and lean['syncs'] == 0  # mmengine reads `steps` per tensor
    assert mmdet['copied'] == 4 * 4 + 4 + 4 * 2 + 2 and lean['copied'] == 4 * 2 + 2
    assert lean['ops'] < mmdet['ops']
    assert '| LeanExpMomentumEMA | 0.0 M |' in format_rows(rows)


def test_ema_weights_are_validated_and_both_kept(tmp_path, tiny_synthetic_data, one_torch_thread):
    VALIDATED.clear()
    work = str(tmp_path / 'work')
    _train(_config(tmp_path, probe=True), tiny_synthetic_data, work, 2, '--ema')
    log = _log(work)
    assert 'EMA: on (momentum 0.007, warm-up gamma 100' in log
    assert 'validating the EMA weights (2 updates)' in log
    assert 'validating the EMA weights (4 updates)' in log
    ckpt = torch.load(osp.join(work, 'epoch_2.pth'), map_location='cpu', weights_only=False)
    key = 'bbox_head.cls_branches.0.weight'
    ema, raw = ckpt['state_dict'][key], ckpt['ema_state_dict'][f'module.{key}']
    assert not torch.equal(ema, raw)  # the average differs from the trained weights
    assert int(ckpt['ema_state_dict']['steps']) == 4
    # what validation saw at epoch 2 is the EMA tensor, not the raw one
    seen = dict(VALIDATED)[2]
    assert seen == pytest.approx(float(ema.double().sum()), rel=1e-6)
    assert seen != pytest.approx(float(raw.double().sum()), rel=1e-6)
    # the backbone trains here (from scratch): every trained tensor has its raw twin
    assert all(f'module.{k}' in ckpt['ema_state_dict'] for k in ckpt['state_dict']
               if k.startswith('backbone.'))
    # torch's own safe loader opens it, nothing installed
    proc = open_without_the_plugin([osp.join(work, 'epoch_2.pth')])
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_checkpoint_written_during_validation_keeps_the_ema_layout():
    """A preemption checkpoint written while the EMA weights are swapped in (a signal
    during validation) holds the same state_dict/ema_state_dict as one written outside."""
    from types import SimpleNamespace

    from mmengine.logging import MMLogger

    from projects.dino_dinov2.engine.hooks import DetEMAHook

    torch.manual_seed(0)
    net = _Net()
    runner = SimpleNamespace(model=net, logger=MMLogger.get_current_instance(), iter=0,
                             epoch=0, _resume=False)
    hook = DetEMAHook()
    hook.before_run(runner)
    for i in range(3):
        with torch.no_grad():
            net.head.weight.add_(1.0)
        runner.iter = i
        hook.after_train_iter(runner, i)

    def save():
        ckpt = dict(state_dict={k: v.clone() for k, v in net.state_dict().items()})
        hook.before_save_checkpoint(runner, ckpt)
        return {k: {n: t.clone() for n, t in v.items()} for k, v in ckpt.items()}

    outside = save()
    hook.before_val_epoch(runner)
    during = save()
    hook.after_val_epoch(runner)
    for part in ('state_dict', 'ema_state_dict'):
        assert outside[part].keys() == during[part].keys()
        for key in outside[part]:
            assert torch.equal(outside[part][key], during[part][key]), (part, key)
    assert not torch.equal(outside['state_dict']['head.weight'],
                           outside['ema_state_dict']['module.head.weight'])
    assert torch.equal(outside['ema_state_dict']['module.head.weight'], net.head.weight)
    assert 'module.frozen.weight' not in outside['ema_state_dict']  # shared: written once


# -- best checkpoint and early stopping across --resume -------------------------------------

# any rise is better (0.35 after 0.30): mmengine's EarlyStoppingHook wants 0.1 more by default
SCORES = {1: 0.30, 2: 0.35, 3: 0.33, 4: 0.34, 5: 0.60, 6: 0.70}


def test_best_checkpoint_survives_resume_after_better_then_worse(
        tmp_path, tiny_synthetic_data, one_torch_thread):
    config = _config(tmp_path, scores=SCORES)
    work = str(tmp_path / 'work')
    _train(config, tiny_synthetic_data, work, 3, '--save-best')  # 0.30, 0.35 (best), 0.33
    assert _best_files(work) == ['best_coco_bbox_mAP_epoch_2.pth']
    log = _log(work)
    assert "epoch_2.pth written again with this validation's best score" in log
    # resume from the checkpoint of the best epoch: mmengine's file said best = 0.30 at
    # epoch 1 (written before that validation), so 0.33 and 0.34 would become "best"
    _train(config, tiny_synthetic_data, work, 4, '--save-best', '--resume',
           osp.join(work, 'epoch_2.pth'))
    assert _best_files(work) == ['best_coco_bbox_mAP_epoch_2.pth']
    last = torch.load(osp.join(work, 'epoch_4.pth'), map_location='cpu', weights_only=False)
    info = last['message_hub']['runtime_info']
    assert info['best_score'] == 0.35 and info['best_ckpt'].endswith('epoch_2.pth')


def test_early_stop_fires_at_the_right_validation_and_resumes_its_count(
        tmp_path, tiny_synthetic_data, one_torch_thread):
    config = _config(tmp_path, scores=SCORES)
    work = str(tmp_path / 'work')
    # 0.30, 0.35 (best), 0.33 (1 without a better), then stopped by the schedule
    _train(config, tiny_synthetic_data, work, 3, '--early-stop', '2')
    assert 'early stop:' not in _log(work)
    # resumed: 0.34 is the 2nd validation without a better score -> stops after epoch 4,
    # before 0.60 at epoch 5 (a count lost on resume would run epoch 5)
    _train(config, tiny_synthetic_data, work, 6, '--early-stop', '2', '--resume')
    log = _log(work)
    assert 'early stopping: resumed at 1 of 2 validations without a better coco/bbox_mAP' in log
    best = osp.join(work, 'best_coco_bbox_mAP_epoch_2.pth')
    assert (f'early stop: coco/bbox_mAP did not improve in 2 validations (best 0.3500 at '
            f'epoch 2); best checkpoint: {best}') in log
    assert osp.isfile(osp.join(work, 'epoch_4.pth'))
    assert not osp.exists(osp.join(work, 'epoch_5.pth'))
    # a run resumed after it stopped early stops again at once
    _train(config, tiny_synthetic_data, work, 6, '--early-stop', '2', '--resume')
    assert not osp.exists(osp.join(work, 'epoch_5.pth'))


def test_a_tie_is_not_better_for_the_best_checkpoint_nor_for_early_stopping(
        tmp_path, tiny_synthetic_data, one_torch_thread):
    config = _config(tmp_path, scores={1: 0.30, 2: 0.35, 3: 0.35, 4: 0.90})
    work = str(tmp_path / 'work')
    _train(config, tiny_synthetic_data, work, 4, '--early-stop', '1')  # 0.35 again: stop
    best = osp.join(work, 'best_coco_bbox_mAP_epoch_2.pth')
    assert _best_files(work) == ['best_coco_bbox_mAP_epoch_2.pth']
    assert (f'early stop: coco/bbox_mAP did not improve in 1 validation (best 0.3500 at '
            f'epoch 2); best checkpoint: {best}') in _log(work)
    assert not osp.exists(osp.join(work, 'epoch_4.pth'))


def test_early_stop_delta(tmp_path, tiny_synthetic_data, one_torch_thread):
    config = _config(tmp_path, scores={1: 0.30, 2: 0.31, 3: 0.90})
    work = str(tmp_path / 'work')
    _train(config, tiny_synthetic_data, work, 3, '--early-stop', '1',
           '--early-stop-delta', '0.02')  # +0.01 is not better by more than 0.02
    log = _log(work)
    assert 'early stop: coco/bbox_mAP did not improve by more than 0.02 in 1 validation ' \
           '(best 0.3000 at epoch 1)' in log
    assert not osp.exists(osp.join(work, 'epoch_3.pth'))


def test_switches_need_validation_and_positive_patience(tmp_path):
    from projects.dino_dinov2 import cli
    from projects.dino_dinov2.errors import ConfigError
    cfg = cli.load_config(SYNTHETIC_CONFIG)
    with pytest.raises(ConfigError, match='--early-stop 0: give the number of validations'):
        cli.apply_run_options(cfg, own_data=True, early_stop=0)
    cfg.val_cfg = None
    with pytest.raises(ConfigError, match='--save-best needs validation during training'):
        cli.apply_run_options(cfg, own_data=True)
    recipe = cli.load_config(osp.join(osp.dirname(SYNTHETIC_CONFIG),
                                      'dino_dinov2_s_12ep.py'))
    lines = cli.apply_run_options(recipe, own_data=False)
    assert lines[:2] == ['EMA: off (validation and checkpoints use the trained weights)',
                         'best checkpoint: off']  # the recipe stays the original's
    assert not any(h.get('type') == 'DetEMAHook' for h in recipe.get('custom_hooks', []))


# -- YOLO folders -----------------------------------------------------------------------------

def test_yolo_export_reads_the_same_boxes_as_its_coco_file(tmp_path, tiny_synthetic_data):
    from mmengine.registry import init_default_scope

    from projects.dino_dinov2.datasets import CheckedCocoDataset
    from projects.dino_dinov2.datasets.layouts_out import write_yolo
    init_default_scope('mmdet')
    yaml_path = write_yolo(tiny_synthetic_data, str(tmp_path / 'yolo'))
    classes = ('circle', 'square', 'triangle')
    for split in ('train', 'val'):
        coco = CheckedCocoDataset(
            ann_file=osp.join(tiny_synthetic_data, 'annotations', f'instances_{split}.json'),
            data_prefix=dict(img=osp.join(tiny_synthetic_data, split) + '/'),
            metainfo=dict(classes=classes), pipeline=[], test_mode=split == 'val')
        yolo = CheckedCocoDataset(ann_file=yaml_path, yolo_split=split, data_prefix=dict(img=''),
                                  metainfo=dict(classes=classes), pipeline=[],
                                  test_mode=split == 'val')
        assert len(coco) == len(yolo) > 0
        for i in range(len(coco)):
            a, b = coco.get_data_info(i), yolo.get_data_info(i)
            assert osp.basename(a['img_path']) == osp.basename(b['img_path'])
            assert [x['bbox_label'] for x in a['instances']] == \
                [x['bbox_label'] for x in b['instances']]
            np.testing.assert_allclose([x['bbox'] for x in a['instances']],
                                       [x['bbox'] for x in b['instances']], atol=1e-3)


def test_yolo_data_root_trains_validates_and_tests(tmp_path, tiny_synthetic_data,
                                                   one_torch_thread, capsys):
    from projects.dino_dinov2.datasets.layouts_out import write_yolo
    root = str(tmp_path / 'yolo')
    write_yolo(tiny_synthetic_data, root)
    work = str(tmp_path / 'work')
    load_tool('train').main([SYNTHETIC_CONFIG, '--data-root', root, '--epochs', '2',
                             '--early-stop', '1', '--aug', 'small', '--work-dir', work,
                             '--cfg-options', *TINY_MODEL_OPTIONS])
    out = capsys.readouterr().out
    assert (f'data: YOLO data.yaml at {root}; train: 8 images' in out
            and '3 classes from data.yaml: circle, square, triangle' in out)
    assert 'EMA: on' in out and 'augmentation: small' in out
    log = _log(work)
    assert 'validating the EMA weights' in log and '| circle ' in log
    assert 'CheckedCocoDataset ' + osp.join(root, 'data.yaml') + ' (train): 8 images' in log
    assert len(_best_files(work)) == 1
    metrics = load_tool('test').main([SYNTHETIC_CONFIG, osp.join(work, 'epoch_2.pth'),
                                      '--data-root', root, '--work-dir', str(tmp_path / 't'),
                                      '--cfg-options', *TINY_MODEL_OPTIONS])
    assert 'coco/per_class/circle_AP' in metrics
    assert 'the EMA weights (state_dict, 4 updates' in _log(str(tmp_path / 't'))


def test_bad_yolo_inputs_get_one_line(tmp_path, tiny_synthetic_data):
    from projects.dino_dinov2 import cli
    from analysis_tools.dataset_check import check_splits
    from projects.dino_dinov2.datasets import DatasetError, find_layout
    from projects.dino_dinov2.datasets.layouts_out import write_yolo
    root = tmp_path / 'yolo'
    write_yolo(tiny_synthetic_data, str(root))
    label = sorted((root / 'train' / 'labels').glob('*.txt'))[0]
    good = label.read_text()
    # a box past the image: skipped, counted, named in the data summary and the checker
    label.write_text(good + '0 0.5 1.7 0.2 0.2\n')
    cfg = cli.load_config(SYNTHETIC_CONFIG)
    cli.use_dataset(cfg, str(root))
    report = check_splits(list(find_layout(str(root)).splits.values()), check_images=False)
    assert any(f'1 YOLO label lines skipped: values outside 0..1 ({label}:' in f.text
               for f in report.findings)
    # a line that is not 5 numbers: the file is broken, an error naming file and line
    n = len(good.splitlines()) + 1
    label.write_text(good + '0 0.5 0.5\n')
    with pytest.raises(DatasetError, match=f'{label}:{n}: 5 numbers expected'):
        cli.use_dataset(cli.load_config(SYNTHETIC_CONFIG), str(root))
    label.write_text(good)
    (root / 'data.yaml').write_text('train: ../train/images\nnames: [a, b, c]\n')
    with pytest.raises(DatasetError, match='no val split found .* or a val: key in data.yaml'):
        find_layout(str(root))


# -- --aug small --------------------------------------------------------------------------------

def test_small_preset_keeps_the_recipe_and_adds_documented_steps(tmp_path, tiny_synthetic_data):
    from mmengine.dataset import Compose
    from mmengine.registry import init_default_scope

    from projects.dino_dinov2 import cli
    from projects.dino_dinov2.datasets.augment import small_data_pipeline
    recipe = cli.load_config(osp.join(osp.dirname(SYNTHETIC_CONFIG), 'dino_dinov2_s_12ep.py'))
    before = recipe.train_dataloader.dataset.pipeline
    after = small_data_pipeline(before)
    kinds = [t['type'] for t in after]
    assert kinds == ['CheckedLoadImageFromFile', 'LoadAnnotations', 'Brightness', 'Contrast',
                     'Color', 'RandomApply', 'RandomFlip', 'RandomChoice', 'PackDetInputs']
    assert after[7]['prob'] == [0.3, 0.7] and 'prob' not in before[3]
    # the synthetic pipeline (no crop branch) gets a crop before its resize; it runs
    init_default_scope('mmdet')
    synthetic = cli.load_config(SYNTHETIC_CONFIG).train_dataloader.dataset.pipeline
    pipeline = small_data_pipeline(synthetic)
    assert [t['type'] for t in pipeline][5:7] == ['RandomApply', 'RandomApply']
    run = Compose(pipeline)
    ann = json.load(open(osp.join(tiny_synthetic_data, 'annotations', 'instances_train.json')))
    img = ann['images'][0]
    boxes = [a for a in ann['annotations'] if a['image_id'] == img['id']]
    results = dict(img_path=osp.join(tiny_synthetic_data, 'train', img['file_name']),
                   img_id=img['id'], height=img['height'], width=img['width'],
                   instances=[dict(bbox=[b['bbox'][0], b['bbox'][1], b['bbox'][0] + b['bbox'][2],
                                         b['bbox'][1] + b['bbox'][3]],
                                   bbox_label=b['category_id'] - 1, ignore_flag=0)
                              for b in boxes])
    for seed in range(8):
        np.random.seed(seed)
        out = run(dict(results))
        data = out['inputs']
        assert data.dtype == torch.uint8 and max(data.shape[1:]) == 128
        b = out['data_samples'].gt_instances.bboxes.tensor
        assert ((b[:, 2] > b[:, 0]) & (b[:, 3] > b[:, 1])).all()
