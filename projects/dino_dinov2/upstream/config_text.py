"""mmengine's ``Config`` with its formatted text computed once per content.

``Config.pretty_text`` runs yapf over the whole config each time it is read: 1-4 s for
a recipe config on a 2-core machine. A Runner reads it when it logs the config, dumps it
to the work dir, hands it to each visualizer backend and writes it into every checkpoint's
``meta``, so a short run spent more time formatting its config than training. Here the
text is kept per (content, format flag): the same config gives the same text, byte for
byte, and any change to the config gives a new one.

Upstream: open-mmlab/mmcv#2466 ("cfg.pretty_text very slow", open; the same code in
mmengine 0.10.7). Delete when mmengine formats a config's text once.
"""
from __future__ import annotations

from collections import OrderedDict

from mmengine.config import Config

_TEXTS: 'OrderedDict[tuple, str]' = OrderedDict()
_KEEP = 16


class TextCachedConfig(Config):
    """A ``Config`` (same contents, same behaviour) whose ``pretty_text`` is cached.

    ``copy.deepcopy`` (what the Runner does with its config) keeps the class."""

    @classmethod
    def of(cls, cfg: Config) -> 'TextCachedConfig':
        """The same config as this class (through mmengine's own state protocol)."""
        if isinstance(cfg, cls):
            return cfg
        other = cls.__new__(cls)
        other.__setstate__(cfg.__getstate__())
        return other

    @property
    def pretty_text(self) -> str:
        key = (self._format_python_code, repr(self.to_dict()))
        text = _TEXTS.get(key)
        if text is None:
            text = super().pretty_text
            _TEXTS[key] = text
            while len(_TEXTS) > _KEEP:
                _TEXTS.popitem(last=False)
        else:
            _TEXTS.move_to_end(key)
        return text
