"""mmengine's ``Config`` with its formatted text computed once per content.

``Config.pretty_text`` runs yapf over the whole config each time it is read: 1-2 s for a
recipe config on a 2-core machine. A Runner reads it when it logs the config, dumps it to
the work dir, hands it to each visualizer backend and writes it into every checkpoint's
``meta``, so a short run spent more time formatting its config than training. Here the
text is kept per (content, format flag), and yapf formats each top-level statement on its
own, kept per statement: configs that differ in a few keys (a resumed run, another
schedule) format only those. The text equals mmengine's byte for byte (yapf formats the
logical lines of a module one by one; mmengine's statements are one per line, no blank
lines between them): the test compares them.

Upstream: open-mmlab/mmcv#2466 ("cfg.pretty_text very slow", open; the same code in
mmengine 0.10.7). Delete when mmengine formats a config's text once.
"""
import ast
from collections import OrderedDict

from mmengine.config import Config

_TEXTS: 'OrderedDict[tuple, str]' = OrderedDict()  # (format flag, contents) -> text
_STATEMENTS: 'OrderedDict[str, str]' = OrderedDict()  # one statement -> its yapf text
# mmengine 0.10.7's style for Config.pretty_text (mmengine/config/config.py)
YAPF_STYLE = dict(based_on_style='pep8', blank_line_before_nested_class_or_def=True,
                  split_before_expression_after_opening_paren=True)


def _cached(cache: OrderedDict, key, make, keep: int):
    """``cache[key]``, made by ``make()`` the first time; beyond ``keep`` entries the least
    recently used go."""
    if key in cache:
        cache.move_to_end(key)
        return cache[key]
    value = cache[key] = make()
    while len(cache) > keep:
        cache.popitem(last=False)
    return value


def _yapf(code: str) -> str:
    from yapf.yapflib.yapf_api import FormatCode
    return FormatCode(code, style_config=YAPF_STYLE)[0]


def format_by_statement(text: str) -> str:
    """``FormatCode(text)`` of mmengine's unformatted config text, statement by statement."""
    lines = text.splitlines(keepends=True)
    out = []
    for node in ast.parse(text).body:
        code = ''.join(lines[node.lineno - 1:node.end_lineno])
        out.append(_cached(_STATEMENTS, code, lambda: _yapf(code), keep=2048))
    return ''.join(out)


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
        return _cached(_TEXTS, (self._format_python_code, repr(self.to_dict())),
                       self._formatted_text, keep=16)

    def _formatted_text(self) -> str:
        formatted = self._format_python_code
        object.__setattr__(self, '_format_python_code', False)  # not a config key
        try:
            text = super().pretty_text
        finally:
            object.__setattr__(self, '_format_python_code', formatted)
        return format_by_statement(text) if formatted else text
