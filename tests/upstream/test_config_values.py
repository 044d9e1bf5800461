"""Fuzzing the numeric settings users touch: 0 and -1 (and NaN, a word) through
--cfg-options and the flags either run, where the value is valid, or end in one line
before training starts; never a traceback."""
import os.path as osp

import pytest

from config_runs import (SHRINK_MODEL, as_argv, data_options, make_dataset_for, scale_options,
                         schedule_options, _scale_items)
from helpers import REPO, SYNTHETIC_CONFIG, load_tool
from projects.dino_dinov2 import cli
from projects.dino_dinov2.cli import exit_on_user_error

RECIPE = osp.join(REPO, 'configs', 'dino_dinov2_s_12ep.py')
KEYS = ['train_dataloader.batch_size', 'val_dataloader.batch_size',
        'train_dataloader.num_workers', 'optim_wrapper.optimizer.lr',
        'optim_wrapper.optimizer.weight_decay', 'optim_wrapper.clip_grad.max_norm',
        'train_cfg.val_interval', 'default_hooks.checkpoint.interval',
        'default_hooks.logger.interval', 'model.num_queries',
        'model.dn_cfg.group_cfg.num_dn_queries', 'model.test_cfg.max_per_img',
        'auto_scale_lr.base_batch_size', 'model.encoder.num_layers']
# valid: no worker processes, no weight decay, a checkpoint only at the end
VALID = {('train_dataloader.num_workers', 0), ('optim_wrapper.optimizer.weight_decay', 0),
         ('default_hooks.checkpoint.interval', -1)}


def _keys(config):
    cfg = cli.load_config(config)
    length = 'train_cfg.max_iters' if 'max_iters' in cfg.train_cfg else 'train_cfg.max_epochs'
    scale = next(path for path, _ in _scale_items(cfg.train_dataloader.dataset.pipeline,
                                                  'train_dataloader.dataset.pipeline'))
    return KEYS + [length, scale]


def _value(config, key, v):
    """v for a number; a pair of v for an image scale."""
    cfg = cli.load_config(config)
    current = cfg
    for part in key.split('.'):
        current = current[int(part)] if isinstance(current, list) else current[part]
    if isinstance(current, (list, tuple)):
        return [(v, v)] if isinstance(current[0], (list, tuple)) else (v, v)
    return v


CASES = [(c, k, v) for c in (SYNTHETIC_CONFIG, RECIPE) for k in _keys(c) for v in (0, -1)]


@pytest.mark.parametrize('config, key, v', CASES,
                         ids=[f'{osp.basename(c)[12:-3]}-{k}={v}' for c, k, v in CASES])
def test_zero_and_minus_one(config, key, v, tmp_path, monkeypatch, capsys):
    value = _value(config, key, v)
    if (key, v) in VALID:
        cfg = cli.load_config(config, {key: value})  # passes the checks; runs below
        assert cfg is not None
        return
    monkeypatch.setenv('LOCAL_RANK', '0')
    with pytest.raises(SystemExit) as e:
        with exit_on_user_error():
            load_tool('train').main([config, '--work-dir', str(tmp_path), '--cfg-options',
                                     f'{key}={value}'.replace(' ', '')])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and err[-1].startswith(f'error: --cfg-options {key}'), err[-3:]
    assert 'Traceback' not in '\n'.join(err)
    assert not osp.exists(osp.join(tmp_path, 'last_checkpoint'))  # nothing trained


@pytest.mark.parametrize('key, value, says', [
    ('optim_wrapper.optimizer.lr', 'nan', 'must be a finite number, got nan'),
    ('optim_wrapper.optimizer.weight_decay', 'inf', 'must be a finite number, got inf'),
    ('train_dataloader.batch_size', 'two', 'expected int'),
    ('model.num_queries', '2.5', 'expected int (now 50), got float'),
    ('model.bbox_head.type', 'DINOHaed', 'did you mean DINOHead'),
    ('model.backbone.model_name', 'vit_small_patch14_dinov3', 'did you mean'),
])
def test_nan_words_and_unknown_names(key, value, says, tmp_path, monkeypatch, capsys):
    """With the data in place: a name the registry or timm lacks is met at the model's
    build, after the data paths are checked."""
    monkeypatch.setenv('LOCAL_RANK', '0')
    cfg = cli.load_config(SYNTHETIC_CONFIG)
    data = str(tmp_path / 'data')
    make_dataset_for(cfg, data)
    with pytest.raises(SystemExit) as e:
        with exit_on_user_error():
            load_tool('train').main([SYNTHETIC_CONFIG, '--work-dir', str(tmp_path / 'work'),
                                     '--cfg-options', f'{key}={value}',
                                     *as_argv(data_options(cfg, data))])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and says in err[-1], err[-3:]


@pytest.mark.parametrize('flag, value, says', [
    ('--batch-size', '0', '--batch-size must be positive, got 0'),
    ('--lr', '-1', '--lr must be positive, got -1.0'),
    ('--epochs', '0', '--epochs must be positive, got 0'),
])
def test_flags_at_zero_and_below(flag, value, says, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv('LOCAL_RANK', '0')
    with pytest.raises(SystemExit) as e:
        with exit_on_user_error():
            load_tool('train').main([SYNTHETIC_CONFIG, '--work-dir', str(tmp_path), flag,
                                     value])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and says in err[-1], err[-3:]


@pytest.mark.parametrize('config', [SYNTHETIC_CONFIG, RECIPE], ids=['synthetic', 's_12ep'])
def test_the_valid_ones_run(config, tmp_path, one_torch_thread):
    """num_workers=0, weight_decay=0, checkpoint interval -1 together: trains 2 iterations
    and writes its checkpoint at the end."""
    cfg = cli.load_config(config)
    data = str(tmp_path / 'data')
    make_dataset_for(cfg, data)
    options = {**data_options(cfg, data), **SHRINK_MODEL, **scale_options(cfg),
               **schedule_options(cfg, 2)}
    options.update({k: v for k, v in VALID})
    load_tool('train').main([config, '--work-dir', str(tmp_path / 'w'), '--cfg-options',
                             *as_argv(options)])
    last = open(tmp_path / 'w' / 'last_checkpoint').read().strip()
    assert last.endswith(('iter_2.pth', 'epoch_2.pth'))
