"""Your own dataset in one command: --data-root trains, validates and tests with the
dataset's classes; --epochs sets passes over it; --load-from fine-tunes across class counts."""
import copy
import os.path as osp

import pytest
import torch
from mmengine.registry import init_default_scope

from config_runs import (OWN_CLASSES, REPO, SHRINK_MODEL, as_argv, scale_options,
                         write_own_dataset)
from helpers import init_weights_quietly, load_tool, read_checkpoint
from projects.dino_dinov2 import cli, engine
from projects.dino_dinov2.cli import CheckpointError

from mmdet.registry import MODELS

RECIPE = osp.join(REPO, 'configs', 'dino_dinov2_s_12ep.py')
SYNTHETIC = osp.join(REPO, 'configs', 'dino_dinov2_synthetic.py')
CLASS_KEYS = ('bbox_head.cls_branches.', 'dn_query_generator.label_embedding.')


def _shrink(config):
    return {**SHRINK_MODEL, **scale_options(cli.load_config(config))}


def _model(config, options, data_root=None):
    cfg = cli.load_config(config, options)
    if data_root:
        cli.use_dataset(cfg, data_root)
    init_default_scope('mmdet')
    torch.manual_seed(0)
    return init_weights_quietly(MODELS.build(cfg.model))


@pytest.fixture(scope='module')
def coco80_checkpoint(tmp_path_factory):
    """A checkpoint of the (shrunk) 80-class recipe detector, as mmengine saves one."""
    path = str(tmp_path_factory.mktemp('coco80') / 'coco80.pth')
    model = _model(RECIPE, _shrink(RECIPE))
    torch.save(dict(meta=dict(iter=90000), state_dict=model.state_dict()), path)
    return path


@pytest.mark.parametrize('layout, config, batch', [
    ('folders', RECIPE, 3),  # iteration loop: 5 images at batch 3 = 2 iterations a pass
    ('coco2017', SYNTHETIC, 4),  # epoch loop: 2 iterations an epoch at batch 4
])
def test_one_command_trains_validates_and_tests_on_own_data(
        layout, config, batch, tmp_path, coco80_checkpoint, one_torch_thread, capsys):
    root = str(tmp_path / 'data')
    counts = write_own_dataset(root, layout)
    work = str(tmp_path / 'work')
    shrink = as_argv(_shrink(config))
    iter_based = config == RECIPE
    extra = ['--load-from', coco80_checkpoint] if iter_based else []
    load_tool('train').main([config, '--data-root', root, '--epochs', '1', '--batch-size',
                             str(batch), '--work-dir', work, *extra, '--cfg-options', *shrink])
    out = capsys.readouterr().out
    kind = 'one folder per split' if layout == 'folders' else 'COCO 2017 layout'
    assert (f'data: {kind} at {root}; train: 6 images (1 without boxes), '
            f'{counts["train"]["boxes"]} boxes;') in out
    assert '3 classes from ' in out and out.count('red car, stop sign, traffic light') >= 1
    assert 'schedule: 1 epochs over 5 training images' in out
    assert ('(2 iterations per epoch at total batch 3): 2 iterations' in out if iter_based
            else '(total batch 4): 1 epochs' in out)
    ckpt = read_checkpoint(osp.join(work, 'iter_2.pth' if iter_based else 'epoch_1.pth'),
                           map_location='cpu')
    assert ckpt['meta']['iter'] == 2  # one pass over the 5 training images
    assert tuple(ckpt['meta']['dataset_meta']['classes']) == OWN_CLASSES
    state = ckpt['state_dict']
    assert state['bbox_head.cls_branches.0.weight'].shape[0] == 3
    assert state['dn_query_generator.label_embedding.weight'].shape[0] == 3
    log = open(next(iter(sorted(__import__('glob').glob(osp.join(work, '*', '*.log')))))).read()
    assert '| red car ' in log and '| traffic light |     - |     - |     0 |' in log
    if iter_based:
        assert 're-initialized for the new class count (80 -> 3 classes): ' \
               'bbox_head.cls_branches.0.weight' in log

    metrics = load_tool('test').main([config, osp.join(work, 'iter_2.pth' if iter_based
                                                       else 'epoch_1.pth'),
                                      '--data-root', root, '--work-dir', str(tmp_path / 't'),
                                      '--cfg-options', *shrink])
    out = capsys.readouterr().out
    test_split = 'test' if layout == 'folders' else 'val'
    boxes = counts[test_split]['boxes_per_class']
    for name in OWN_CLASSES:
        assert metrics[f'coco/per_class/{name}_boxes'] == boxes[name]
    assert '| class         | AP    | AP50  | boxes |' in out
    assert '| red car       |' in out and 'bbox mAP:' in out


def test_fine_tuning_loads_everything_but_the_class_dependent_tensors(
        tmp_path, coco80_checkpoint):
    root = str(tmp_path / 'data')
    write_own_dataset(root, 'folders')
    model = _model(RECIPE, _shrink(RECIPE), data_root=root)
    fresh = copy.deepcopy(model.state_dict())
    line = engine.load_for_fine_tuning(model, coco80_checkpoint)
    saved = read_checkpoint(coco80_checkpoint, map_location='cpu')['state_dict']
    reinit = []
    for key, value in model.state_dict().items():
        if saved[key].shape == value.shape:
            assert torch.equal(value, saved[key]), key
        else:
            assert key.startswith(CLASS_KEYS), key
            assert torch.equal(value, fresh[key]), key  # the fresh initialisation
            reinit.append(key)
    # 2 classification branches (1 decoder layer + encoder proposals) x weight, bias + the
    # denoising label embedding
    assert sorted(reinit) == sorted(engine.class_dependent_keys(model.state_dict()))
    assert len(reinit) == 5
    assert line.endswith(', '.join(reinit)) and '(80 -> 3 classes)' in line


def test_any_other_mismatch_is_an_error_naming_the_key(tmp_path, coco80_checkpoint):
    model = _model(RECIPE, dict(_shrink(RECIPE), **{'model.encoder.num_layers': 2}))
    with pytest.raises(CheckpointError, match=r'encoder.layers.1.\S+ is not in the checkpoint'):
        engine.load_for_fine_tuning(model, coco80_checkpoint)
    other = _model(RECIPE, dict(_shrink(RECIPE), **{
        'model.backbone.model_name': 'vit_base_patch14_dinov2.lvd142m',
        'model.neck.0.in_channels': 768}))
    with pytest.raises(CheckpointError, match=r'backbone.vit.\S+ has shape \(\d+.*\) there'):
        engine.load_for_fine_tuning(other, coco80_checkpoint)
    path = tmp_path / 'weights.pth'
    torch.save({'a': 1}, path)
    with pytest.raises(CheckpointError, match="not a checkpoint of this project's models"):
        engine.load_for_fine_tuning(model, str(path))


@pytest.mark.parametrize('config, epochs, want', [
    # 5 images at total batch 2: 3 iterations a pass; lr step at 82,500/90,000 of the run
    (RECIPE, 3, dict(max_iters=9, val_interval=3, step=8)),
    (SYNTHETIC, 3, dict(max_epochs=3, val_interval=1, step=2)),  # step 10/12 of 3 epochs
])
def test_epochs_convert_to_the_loop_the_config_uses(config, epochs, want):
    cfg = cli.load_config(config)
    line = cli.set_epochs(cfg, epochs, images=5, total_batch=2)
    for key in ('max_iters', 'max_epochs', 'val_interval'):
        if key in want:
            assert cfg.train_cfg[key] == want[key], key
    assert cfg.param_scheduler[0].milestones == [want['step']]
    # validation and a checkpoint at least once per epoch
    assert cfg.default_hooks.checkpoint.interval == (3 if 'max_iters' in want else 1)
    if 'max_iters' in want:
        assert cfg.param_scheduler[0].end == 9
    assert line.startswith(f'schedule: {epochs} epochs over 5 training images')


def test_epochs_and_a_schedule_in_cfg_options_conflict():
    cfg = cli.load_config(RECIPE)
    batch = cli.apply_batch_and_lr(cfg)
    with pytest.raises(ValueError, match='--epochs and --cfg-options train_cfg'):
        cli.schedule_for_run(cfg, batch, epochs=2, user_schedule=True)


@pytest.mark.parametrize('given', ['test', 'val'])
def test_an_evaluation_needs_only_the_split_it_evaluates(given, tmp_path):
    """tools/test.py --test-ann/--test-img alone (no training split: it refused before)."""
    from config_runs import write_own_dataset
    from projects.dino_dinov2.datasets.errors import DatasetError
    root = str(tmp_path / 'data')
    write_own_dataset(root, 'folders')
    ann, img = osp.join(root, 'valid', '_annotations.coco.json'), osp.join(root, 'valid')
    cfg = cli.load_config(osp.join(REPO, 'configs', 'dino_dinov2_b_12ep.py'))
    train_ann = cfg.train_dataloader.dataset.ann_file
    line, _ = cli.use_dataset(cfg, None, {given: (ann, img)}, test=True)
    assert line.endswith(f'evaluating the {given} split')
    assert cfg.test_dataloader.dataset.ann_file == osp.abspath(ann)
    assert cfg.test_evaluator.ann_file == osp.abspath(ann)
    assert cfg.model.bbox_head.num_classes == len(OWN_CLASSES)
    assert cfg.train_dataloader.dataset.ann_file == train_ann  # not read, not changed
    with pytest.raises(DatasetError, match='--test-ann FILE --test-img DIR'):
        cli.use_dataset(cfg, None, {}, test=True)
    with pytest.raises(DatasetError, match='no train split given'):  # training needs it
        cli.use_dataset(cfg, None, {given: (ann, img)})
