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

_TEXTS: 'OrderedDict[tuple, str]' = OrderedDict()
_STATEMENTS: 'OrderedDict[str, str]' = OrderedDict()
_KEEP = 16
_KEEP_STATEMENTS = 2048
# mmengine 0.10.7's style for Config.pretty_text (mmengine/config/config.py)
YAPF_STYLE = dict(based_on_style='pep8', blank_line_before_nested_class_or_def=True,
                  split_before_expression_after_opening_paren=True)


def _format_statement(code: str) -> str:
    text = _STATEMENTS.get(code)
    if text is None:
        from yapf.yapflib.yapf_api import FormatCode
        text, _ = FormatCode(code, style_config=YAPF_STYLE)
        _STATEMENTS[code] = text
        while len(_STATEMENTS) > _KEEP_STATEMENTS:
            _STATEMENTS.popitem(last=False)
    else:
        _STATEMENTS.move_to_end(code)
    return text


def format_by_statement(text: str) -> str:
    """``FormatCode(text)`` of mmengine's unformatted config text, statement by statement."""
    lines = text.splitlines(keepends=True)
    out = []
    for node in ast.parse(text).body:
        out.append(_format_statement(''.join(lines[node.lineno - 1:node.end_lineno])))
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
        key = (self._format_python_code, repr(self.to_dict()))
        text = _TEXTS.get(key)
        if text is None:
            formatted = self._format_python_code
            object.__setattr__(self, '_format_python_code', False)  # not a config key
            try:
                text = super().pretty_text
            finally:
                object.__setattr__(self, '_format_python_code', formatted)
            if formatted:
                text = format_by_statement(text)
            _TEXTS[key] = text
            while len(_TEXTS) > _KEEP:
                _TEXTS.popitem(last=False)
        else:
            _TEXTS.move_to_end(key)
        return text
