"""The config's formatted text is computed once per content and equals mmengine's."""
import copy
import os.path as osp

from mmengine.config import Config

from helpers import REPO
from projects.dino_dinov2 import cli
from projects.dino_dinov2.upstream import config_text

RECIPE = osp.join(REPO, 'configs', 'dino_dinov2_s_12ep.py')


def test_same_text_as_mmengine_once_per_content(monkeypatch):
    cfg = cli.load_config(RECIPE)
    assert isinstance(cfg, config_text.TextCachedConfig)
    calls = []
    real = Config.pretty_text.fget

    def counted(self):
        calls.append(1)
        return real(self)
    monkeypatch.setattr(Config, 'pretty_text', property(counted))
    monkeypatch.setattr(config_text, '_TEXTS', type(config_text._TEXTS)())
    text = cfg.pretty_text
    runner_copy = copy.deepcopy(cfg)  # what the Runner keeps
    assert type(runner_copy) is config_text.TextCachedConfig
    assert runner_copy.pretty_text == text and runner_copy.dump() == text
    assert len(calls) == 1
    assert text == real(Config.fromfile(RECIPE))  # byte for byte mmengine's

    runner_copy.train_cfg.max_iters = 7  # any change: formatted again
    changed = runner_copy.pretty_text
    assert len(calls) == 2 and changed != text and 'max_iters=7' in changed
    assert cfg.pretty_text == text and len(calls) == 2
