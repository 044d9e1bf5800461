"""--cfg-options: unknown key or wrong type -> error naming the key; missing data root
or annotation file -> error naming the key and path; good options still merge."""
import pytest

from helpers import SYNTHETIC_CONFIG, data_cfg_options, names, tiny_run_options
from projects.dino_dinov2.cli import ConfigError, check_data_paths, load_config


def _options(strings):
    """``key=value`` strings parsed as the tools' ``--cfg-options`` (mmengine DictAction)."""
    import argparse

    from mmengine.config import DictAction
    parser = argparse.ArgumentParser()
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)
    return parser.parse_args(['--cfg-options', *strings]).cfg_options


def _error(option):
    with pytest.raises(ConfigError) as e:
        load_config(SYNTHETIC_CONFIG, _options([option]))
    msg = str(e.value)
    assert '\n' not in msg
    return msg


ESCAPE = (f' If the key is right, set it in a config file that inherits {SYNTHETIC_CONFIG} '
          '(_base_): only --cfg-options are checked.')


@pytest.mark.parametrize('option, message', [
    ('train_cfg.max_epoch=24', "--cfg-options train_cfg.max_epoch: unknown key 'max_epoch' "
     'in train_cfg (ResumableEpochBasedTrainLoop); did you mean train_cfg.max_epochs?' + ESCAPE),
    ('model.bbox_head.num_clases=3', "--cfg-options model.bbox_head.num_clases: unknown key "
     "'num_clases' in model.bbox_head (BatchMatchingDINOHead); did you mean "
     'model.bbox_head.num_classes?' + ESCAPE),
    ('optim_wrapper.optimizer.lrr=1', "--cfg-options optim_wrapper.optimizer.lrr: unknown "
     "key 'lrr' in optim_wrapper.optimizer (AdamW); did you mean "
     'optim_wrapper.optimizer.lr?' + ESCAPE),
    ('model.encoder.num_layer=1', "--cfg-options model.encoder.num_layer: unknown key "
     "'num_layer' in model.encoder; did you mean model.encoder.num_layers?" + ESCAPE),
    ('max_epoch=3', "--cfg-options max_epoch: unknown key 'max_epoch' in the top level; "
     'did you mean max_epochs?' + ESCAPE),
    ('wandb=1', "--cfg-options wandb: unknown key 'wandb' in the top level." + ESCAPE),
])
def test_unknown_key(option, message):
    assert _error(option) == message


@pytest.mark.parametrize('option, message', [
    ('train_dataloader.batch_size=two',
     "--cfg-options train_dataloader.batch_size='two': expected int (now 4), got str"),
    ('train_dataloader.batch_size=2.5',
     '--cfg-options train_dataloader.batch_size=2.5: expected int (now 4), got float'),
    ('train_cfg.max_epochs=[1,2]',
     '--cfg-options train_cfg.max_epochs=[1, 2]: expected int (now 12), got list'),
    ('model.backbone.frozen=yes',
     "--cfg-options model.backbone.frozen='yes': expected bool (now False), got str"),
    ('model.backbone.pretrained=3',
     '--cfg-options model.backbone.pretrained=3: expected bool or str (now False), got int'),
    ('optim_wrapper.optimizer.lr=fast',
     "--cfg-options optim_wrapper.optimizer.lr='fast': expected float or Tensor (now 0.0002), "
     'got str'),
    ('train_dataloader.dataset.data_root=7',
     "--cfg-options train_dataloader.dataset.data_root=7: expected str or None (now "
     "'data/synthetic/'), got int"),
])
def test_wrong_type(option, message):
    assert _error(option) == message


@pytest.mark.parametrize('option, message', [
    ('model.neck.5.in_channels=1', '--cfg-options model.neck.5.in_channels: model.neck has '
     '2 items, no index 5'),
    ('model.neck.first=1', '--cfg-options model.neck.first: model.neck is a list; address '
     'its items by index (model.neck.0...)'),
    ('train_cfg.max_epochs.value=1', "--cfg-options train_cfg.max_epochs.value: "
     "train_cfg.max_epochs is 12, not a dict: it has no key 'value'"),
])
def test_wrong_structure(option, message):
    assert _error(option) == message


GOOD = [
    # the tests' own options, and keys a config may leave out
    *tiny_run_options('/data/x', epochs=2), *data_cfg_options('/data/x'),
    'randomness.seed=0', 'randomness.deterministic=True',      # a Runner argument
    'train_cfg.val_begin=3',                                   # EpochBasedTrainLoop's
    'model.backbone.pretrained=/weights/dinov2_vits14.pth',   # Union[bool, str]
    'model.backbone.compile=True', 'model.backbone.trainable_blocks=2',
    'train_dataloader.prefetch_factor=4',                      # a DataLoader argument
    'train_dataloader.dataset.pipeline.0.skip_bad=True',       # CheckedLoadImageFromFile's
    'optim_wrapper.paramwise_cfg.custom_keys.neck.lr_mult=0.5',  # free-form dict
    'model.backbone.model_kwargs.drop_path_rate=0.1',          # timm kwargs
    'env_cfg.cudnn_benchmark=True', 'default_hooks.runtime_info.max_skipped=3',
    'default_hooks.checkpoint.save_best=None', 'load_from=None', 'resume=True',
    'optim_wrapper.optimizer.lr=1', 'model.neck.0.in_channels=192',
    'param_scheduler.0.milestones=[5,8]', 'custom_hooks=[]',
]


def test_good_options_merge():
    options = _options(GOOD)
    cfg = load_config(SYNTHETIC_CONFIG, options)
    assert cfg.randomness.seed == 0 and cfg.train_cfg.val_begin == 3
    assert cfg.train_dataloader.dataset.pipeline[0].skip_bad is True
    assert cfg.optim_wrapper.paramwise_cfg.custom_keys.neck.lr_mult == 0.5
    assert cfg.model.backbone.pretrained == '/weights/dinov2_vits14.pth'
    assert cfg.param_scheduler[0].milestones == [5, 8]


# -- data paths ---------------------------------------------------------------------------

def test_missing_data_root_names_key_and_path(tmp_path):
    cfg = load_config(SYNTHETIC_CONFIG, _options(data_cfg_options(str(tmp_path / 'nope'))))
    with pytest.raises(ConfigError) as e:
        check_data_paths(cfg, ['train_dataloader', 'val_dataloader'])
    assert names(str(e.value), 'train_dataloader.dataset.data_root', f'{tmp_path}/nope/',
                 'not found', '--cfg-options train_dataloader.dataset.data_root=PATH')


def test_missing_annotation_file_names_key_and_path(tiny_synthetic_data, tmp_path):
    cfg = load_config(SYNTHETIC_CONFIG, _options(data_cfg_options(tiny_synthetic_data)))
    check_data_paths(cfg)  # all there
    cfg.val_dataloader.dataset.ann_file = 'annotations/instances_nope.json'
    with pytest.raises(ConfigError) as e:
        check_data_paths(cfg, ['train_dataloader', 'val_dataloader'])
    assert names(str(e.value), 'val_dataloader.dataset.ann_file', 'not found',
                 f'{tiny_synthetic_data}/annotations/instances_nope.json')
    cfg = load_config(SYNTHETIC_CONFIG, _options(data_cfg_options(tiny_synthetic_data)))
    cfg.test_evaluator.ann_file = str(tmp_path / 'gt.json')
    with pytest.raises(ConfigError, match=r'^test_evaluator.ann_file: annotation file not '
                       r'found: .*gt.json$'):
        check_data_paths(cfg, ['test_dataloader'])
    check_data_paths(cfg, ['train_dataloader'])  # only the loaders asked for


def test_missing_config_file(tmp_path):
    with pytest.raises(ConfigError, match=r'^config file not found: .*nope.py$'):
        load_config(str(tmp_path / 'nope.py'))
    with pytest.raises(FileNotFoundError):  # still what callers caught before
        load_config(str(tmp_path / 'nope.py'))
