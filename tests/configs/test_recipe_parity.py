"""The recipe trains what the original trained (docs/parity.md), read off built objects:
the optimizer's param groups, the dataset, the loop, schedulers and hooks, the metric."""
import copy
import json
import os.path as osp

import numpy as np
import pytest
import torch
import torch.nn as nn
from mmengine.optim import build_optim_wrapper
from mmengine.registry import init_default_scope
from mmengine.runner import Runner

from helpers import init_weights_quietly
from config_runs import REPO, SHRINK_MODEL, data_options, make_dataset_for, scale_options
from projects.dino_dinov2 import cli
from projects.dino_dinov2.upstream.amp import preferred_amp_dtype
from projects.dino_dinov2.models import LN2d

from mmdet.registry import DATASETS, METRICS, MODELS

RECIPES = ['dino_dinov2_s_12ep.py', 'dino_dinov2_b_12ep.py', 'dino_dinov2_s_50ep.py',
           'dino_dinov2_b_50ep.py']
# (max iterations, lr step, validation/checkpoint interval) at total batch 16
SCHEDULES = {'12ep': (90000, 82500, 2500), '50ep': (375000, 300000, 2500)}


def _config(name, **options):
    return cli.load_config(osp.join(REPO, 'configs', name), dict(SHRINK_MODEL, **options))


def _model(cfg):
    init_default_scope('mmdet')
    torch.manual_seed(0)
    return init_weights_quietly(MODELS.build(cfg.model))


@pytest.fixture(scope='module')
def recipe_model_and_optimizer():
    cfg = _config('dino_dinov2_s_12ep.py')
    model = _model(cfg)
    optim = build_optim_wrapper(model, copy.deepcopy(cfg.optim_wrapper))
    group = {id(p): g for g in optim.optimizer.param_groups for p in g['params']}
    return model, group


def test_pyramid_trains_at_the_backbone_lr(recipe_model_and_optimizer):
    """The original's pyramid lived in its `backbone` module: lr 1e-4 x 0.1."""
    model, group = recipe_model_and_optimizer
    seen = set()
    for name, p in model.named_parameters():
        if not p.requires_grad:
            assert name.startswith('backbone.'), name  # the frozen ViT, nothing else
            continue
        want = 1e-5 if name.startswith(('backbone.', 'neck.0.')) else 1e-4
        assert group[id(p)]['lr'] == pytest.approx(want), name
        seen.add(name.split('.')[0] + ('.0' if name.startswith('neck.0.') else ''))
    assert {'neck.0', 'neck', 'encoder', 'decoder', 'bbox_head'} <= seen


def test_norm_layers_have_no_weight_decay(recipe_model_and_optimizer):
    """detrex's weight_decay_norm=0 on GroupNorm/LayerNorm; the pyramid's channel norm
    (detectron2's own LayerNorm class there, LN2d here) keeps 1e-4, as do weights."""
    model, group = recipe_model_and_optimizer
    norms = ln2d = others = 0
    for module_name, module in model.named_modules():
        for pname, p in module.named_parameters(recurse=False):
            if not p.requires_grad:
                continue
            wd = group[id(p)]['weight_decay']
            if isinstance(module, (nn.GroupNorm, nn.LayerNorm)):
                assert wd == 0, f'{module_name}.{pname}'
                norms += 1
            elif isinstance(module, LN2d):
                assert wd == pytest.approx(1e-4), f'{module_name}.{pname}'
                ln2d += 1
            else:
                assert wd == pytest.approx(1e-4), f'{module_name}.{pname}'
                others += 1
    assert norms >= 8 and ln2d == 12 and others > 0  # GN x4, transformer LNs; 3 levels x 2 LN2d x 2


def test_pyramid_default_init_and_channel_mapper_bias():
    cfg = _config('dino_dinov2_s_12ep.py')
    model = _model(cfg)
    pyramid, mapper = model.neck
    convs = [m for m in pyramid.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    assert len(convs) == 7
    torch.manual_seed(0)
    init_state = {k: v.clone() for k, v in pyramid.state_dict().items()}
    pyramid.init_weights()
    for k, v in pyramid.state_dict().items():  # init_weights leaves PyTorch's init alone
        assert torch.equal(v, init_state[k]), k
    for conv in convs:
        # PyTorch's default: kaiming_uniform(a=sqrt(5)) -> U(-1/sqrt(fan_in), 1/sqrt(fan_in))
        fan_in = conv.weight[0].numel() if isinstance(conv, nn.Conv2d) else \
            conv.weight.shape[1] * conv.weight[0, 0].numel()
        bound = 1 / np.sqrt(fan_in)
        w = conv.weight.detach()
        assert w.abs().max() <= bound + 1e-7
        assert w.std() == pytest.approx(bound / np.sqrt(3), rel=0.1)
    for conv in mapper.convs:  # ChannelMapper 1x1 convs: bias before GroupNorm
        assert conv.conv.bias is not None and conv.norm is not None


@pytest.mark.parametrize('name', RECIPES)
def test_iteration_schedule_and_cadence(name, tmp_path):
    """The built loop, lr scheduler and hooks follow the original's iteration schedule."""
    max_iters, step, interval = SCHEDULES[name.split('_')[-1][:-3]]
    cfg = _config(name)
    make_dataset_for(cfg, str(tmp_path / 'data'))
    cfg.merge_from_dict({**data_options(cfg, str(tmp_path / 'data')), **scale_options(cfg)})
    cfg.work_dir = str(tmp_path / 'work')
    cfg.train_dataloader.num_workers = 0  # only the loop object is wanted here
    cfg.train_dataloader.persistent_workers = False
    runner = Runner.from_cfg(cfg)
    loop = runner.build_train_loop(cfg.train_cfg)
    from mmdet.datasets.samplers import AspectRatioBatchSampler
    from mmengine.runner import IterBasedTrainLoop
    assert isinstance(loop, IterBasedTrainLoop)  # iterations, as detectron2's trainer
    assert (loop.max_iters, loop.val_interval) == (max_iters, interval)
    assert isinstance(loop.dataloader.batch_sampler, AspectRatioBatchSampler)
    runner.optim_wrapper = runner.build_optim_wrapper(runner.optim_wrapper)
    (sched, ) = runner.build_param_scheduler(cfg.param_scheduler)
    assert not sched.by_epoch and sorted(sched.milestones) == [step]
    head = [g for g in runner.optim_wrapper.param_groups if g['lr'] == pytest.approx(1e-4)]
    assert head
    sched.last_step = step - 1  # one step before the drop ...
    sched.step()
    assert all(g['lr'] == pytest.approx(1e-5) for g in head)  # ... and after it: x0.1
    hooks = {type(h).__name__: h for h in runner.hooks}
    ckpt = hooks['AtomicCheckpointHook']
    assert not ckpt.by_epoch and ckpt.interval == interval
    assert hooks['LoggerHook'].interval == 20
    assert not runner.log_processor.by_epoch


@pytest.mark.parametrize('total, want', [
    (16, (90000, 82500, 2500)),  # the original's total batch: as written
    (2, (720000, 660000, 20000)),  # one GPU x 2: 8x the iterations, same images
    (32, (45000, 41250, 1250)),
    (24, (60000, 55000, 1667)),
])
def test_schedule_keeps_the_images_seen_at_another_total_batch(total, want):
    cfg = _config('dino_dinov2_b_12ep.py')
    line = cli.scale_schedule(cfg, total, 16)
    got = (cfg.train_cfg.max_iters, cfg.param_scheduler[0].milestones[0],
           cfg.train_cfg.val_interval)
    assert got == want
    assert cfg.param_scheduler[0].end == want[0]
    assert cfg.default_hooks.checkpoint.interval == want[2]
    assert f'{want[0]} iterations' in line and f'at total batch {total}' in line
    if total != 16:
        assert '90000 iterations at total batch 16' in line and '1440000 images' in line


def test_schedule_set_on_the_command_line_is_kept():
    cfg = _config('dino_dinov2_b_12ep.py', **{'train_cfg.max_iters': 100})
    line = cli.scale_schedule(cfg, 2, 16, fixed=cli.sets_schedule(
        {'train_cfg.max_iters': 100}))
    assert cfg.train_cfg.max_iters == 100 and 'as set by --cfg-options' in line
    assert not cli.sets_schedule({'model.num_queries': 10})


def test_epoch_schedule_is_not_rescaled():
    cfg = _config('dino_dinov2_synthetic.py')
    line = cli.scale_schedule(cfg, 1, 4)
    assert cfg.train_cfg.max_epochs == 12 and 'epochs are passes over the data' in line


def test_images_without_boxes_are_dropped(tmp_path):
    cfg = _config('dino_dinov2_s_12ep.py')
    counts = make_dataset_for(cfg, str(tmp_path))
    cfg.merge_from_dict(data_options(cfg, str(tmp_path)))
    init_default_scope('mmdet')
    train = DATASETS.build(cfg.train_dataloader.dataset)
    # 6 images: one without boxes, one with only a crowd box (detectron2 drops both)
    assert counts['train_dataloader']['images'] == 6
    assert len(train) == counts['train_dataloader']['trainable'] == 4
    for i in range(len(train)):
        assert any(not inst['ignore_flag'] for inst in train.get_data_info(i)['instances'])
    val = DATASETS.build(cfg.val_dataloader.dataset)
    assert len(val) == 2  # evaluation keeps every image


def test_ap_counts_the_top_100_detections(tmp_path):
    """AP50 (and AP75, APs/m/l) over the top 100 detections per image, as COCO's standard
    summary and detectron2: one image with 150 objects and 150 exact detections can only
    recall 100 of them."""
    cfg = _config('dino_dinov2_s_12ep.py')
    n = 150
    boxes = [[10.0 * (i % 15), 10.0 * (i // 15), 8.0, 8.0] for i in range(n)]
    ann = dict(images=[dict(id=1, file_name='a.jpg', width=200, height=200)],
               annotations=[dict(id=i + 1, image_id=1, category_id=1, bbox=b, area=64.0,
                                 iscrowd=0) for i, b in enumerate(boxes)],
               categories=[dict(id=1, name='person')])
    path = tmp_path / 'ann.json'
    path.write_text(json.dumps(ann))
    evaluator = dict(cfg.val_evaluator, ann_file=str(path))
    init_default_scope('mmdet')
    metric = METRICS.build(evaluator)
    metric.dataset_meta = dict(classes=('person', ))
    xyxy = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in boxes])
    metric.process({}, [dict(img_id=1, ori_shape=(200, 200), pred_instances=dict(
        bboxes=xyxy, scores=torch.linspace(1.0, 0.5, n), labels=torch.zeros(n).long()))])
    out = metric.evaluate(1)
    assert out['coco/bbox_mAP_50'] == pytest.approx(100 / n, abs=0.01)
    assert out['coco/bbox_mAP_50'] == out['coco/bbox_mAP_75'] == out['coco/bbox_mAP']
    assert out['coco/bbox_mAP_s'] == out['coco/bbox_mAP']  # 8 px boxes are small


def test_original_configs_amp_is_float16_with_a_scaler():
    """--amp on an original-equivalent config: the original's float16 + GradScaler; on a
    recipe config: bfloat16 where supported."""
    for name, dtype in (('dino_dinov2_s_12ep_original.py', torch.float16),
                        ('dino_dinov2_s_12ep.py', None)):
        cfg = _config(name)
        cli.enable_amp(cfg)
        model = _model(cfg)
        optim = build_optim_wrapper(model, copy.deepcopy(cfg.optim_wrapper))
        if dtype is not None and torch.cuda.is_available():
            assert optim.cast_dtype == dtype and optim.loss_scaler.is_enabled()
        elif dtype is not None:  # mmengine's CPU autocast: bfloat16 only, said in the log
            assert cfg.optim_wrapper.dtype == 'float16'
            assert optim.cast_dtype == torch.bfloat16
        else:
            assert optim.cast_dtype == getattr(torch, preferred_amp_dtype())
