"""Checks of ``--cfg-options`` and data paths before a run starts.

Why: mmengine's ``Config.merge_from_dict`` adds any key it is given, so a typo
(``train_cfg.max_epoch=24``) is accepted silently and the run trains 12 epochs; a
wrong type (``train_dataloader.batch_size=two``) fails minutes later deep inside a
DataLoader; a missing data root fails when the dataset is first built, with a traceback.

:func:`check_cfg_options` checks each option against the loaded config before merging:

* a key that exists must get a value of a compatible type (a typed parameter's
  annotation decides where the dict has a ``type``, else the current value's type;
  ``None`` is always allowed where no annotation forbids it);
* a new key is allowed only where the config means to accept it: at the top level, a
  ``Runner`` argument (``randomness``, ``resume``, ...); in a dict with a ``type``, a
  constructor argument of that class (walking ``**kwargs`` up the base classes);
  in a dataloader, a ``torch.utils.data.DataLoader`` argument; anywhere under a
  free-form dict (``metainfo``, ``custom_keys``, ``model_kwargs``, ``env_cfg``, ...);
* list items are addressed by index (``model.neck.0.in_channels``), as mmengine merges
  them.

A key refused here can still be set in a config file that inherits this one
(``_base_ = [...]``): only command-line options are checked.

Upstream: mmengine 0.10.7 ``Config.merge_from_dict`` validates nothing. Delete this module
when mmengine refuses unknown ``--cfg-options`` keys and values of the wrong type.
"""
from __future__ import annotations

import copy
import inspect
import math
import os.path as osp
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, Iterable, List, Optional, Set, Tuple

from mmengine.config import Config

from ..errors import ConfigError  # re-exported here, where the config checks live


class ConfigFileNotFoundError(ConfigError, FileNotFoundError):
    """The config file itself does not exist."""


# dicts whose keys are free by design (names, backend options, timm kwargs, ...)
FREE_FORM = frozenset({'metainfo', 'custom_keys', 'model_kwargs', 'backend_args',
                       'env_cfg', 'randomness', 'init_kwargs', 'pretrained_cfg_overlay',
                       'cfg_options', 'kwargs', 'custom_imports'})
# top-level keys the Runner, mmengine's builders and these tools read besides its
# constructor arguments
EXTRA_TOP_LEVEL = frozenset({'model_wrapper_cfg', 'find_unused_parameters', 'compile',
                             'activation_checkpointing', 'efficient_conv_bn_eval',
                             'runner_type', 'custom_imports', 'sync_bn', 'amp_dtype'})
DATALOADERS = ('train_dataloader', 'val_dataloader', 'test_dataloader')


def _join(path: Iterable) -> str:
    return '.'.join(str(p) for p in path)


# -- what a dict accepts ------------------------------------------------------------------

def _registered(type_name: str) -> List[type]:
    """Classes (or functions) registered under ``type_name`` in mmdet's registries."""
    import mmdet.registry as mmdet_registry
    from mmengine.registry import Registry
    found = []
    for name in dir(mmdet_registry):
        reg = getattr(mmdet_registry, name)
        if not isinstance(reg, Registry) or name.startswith('MMENGINE_'):
            continue
        try:
            obj = reg.get(type_name)
        except Exception:  # noqa: BLE001 - a scope or import problem: not this registry
            obj = None
        if obj is not None and obj not in found:
            found.append(obj)
    return found


def _params(obj) -> Tuple[dict, bool]:
    """Named parameters of a class's (or function's) constructor, and free-form or not.

    ``**kwargs`` that a class passes on to its base class are followed up the MRO; only
    if every ``__init__`` up to ``object`` takes ``**kwargs`` is the dict free-form.
    """
    if not inspect.isclass(obj):
        return _collect([obj]), _has_var_kwargs(obj)
    inits = []
    for klass in obj.__mro__[:-1]:  # without object
        if '__init__' in vars(klass):
            inits.append(vars(klass)['__init__'])
            if not _has_var_kwargs(inits[-1]):
                return _collect(inits), False
    return _collect(inits), True


def _has_var_kwargs(func) -> bool:
    try:
        return any(p.kind is p.VAR_KEYWORD for p in inspect.signature(func).parameters.values())
    except (TypeError, ValueError):
        return True


def _collect(funcs) -> dict:
    """{parameter name: annotation (or ``Parameter.empty``)} over ``funcs``."""
    params = {}
    for func in funcs:
        try:
            sig = inspect.signature(func)
        except (TypeError, ValueError):
            continue
        try:
            hints = typing.get_type_hints(func)
        except Exception:  # noqa: BLE001 - unresolvable annotations: no type checks
            hints = {}
        for name, p in sig.parameters.items():
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or name == 'self':
                continue
            params.setdefault(name, hints.get(name, inspect.Parameter.empty))
    return params


def _typed_params(node: Mapping) -> Tuple[dict, bool]:
    """Constructor parameters for the ``type`` of ``node`` (union over candidates)."""
    type_ = node.get('type')
    candidates = _registered(type_) if isinstance(type_, str) else (
        [type_] if callable(type_) else [])
    if not candidates:
        return {}, True  # unknown type: cannot tell, let the builder complain
    params, free = {}, False
    for obj in candidates:
        p, f = _params(obj)
        for k, v in p.items():
            params.setdefault(k, v)
        free = free or f
    return params, free


def _dataloader_params() -> dict:
    from torch.utils.data import DataLoader
    return _params(DataLoader)[0]


def _top_level_params() -> Set[str]:
    from mmengine.runner import Runner
    return set(inspect.signature(Runner.__init__).parameters) - {'self'} | EXTRA_TOP_LEVEL


# -- types --------------------------------------------------------------------------------

def _matches(value: Any, hint: Any) -> Optional[bool]:
    """Whether ``value`` fits the annotation ``hint``; None where that cannot be told."""
    if hint is inspect.Parameter.empty or hint is Any:
        return None
    origin = typing.get_origin(hint)
    if _is_union(hint):
        results = [_matches(value, a) for a in typing.get_args(hint)]
        if any(r is True for r in results):
            return True
        return None if any(r is None for r in results) else False
    if hint is type(None):
        return value is None
    if value is None:
        return False
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return (isinstance(value, int) and not isinstance(value, bool)) or (
            isinstance(value, float) and value.is_integer())
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    base = origin or hint
    if inspect.isclass(base):
        if issubclass(base, Mapping):
            return isinstance(value, Mapping)
        if issubclass(base, (list, tuple)) or base is Sequence:
            return isinstance(value, (list, tuple))
    return None


def _like(value: Any, current: Any) -> bool:
    """Type compatibility with the value the config holds now."""
    if current is None or value is None:
        return True
    if isinstance(current, bool):
        return isinstance(value, bool)
    if isinstance(current, int):
        return _matches(value, int)
    if isinstance(current, float):
        return _matches(value, float)
    if isinstance(current, str):
        return isinstance(value, str)
    if isinstance(current, (list, tuple)):
        return isinstance(value, (list, tuple))
    if isinstance(current, Mapping):
        return isinstance(value, Mapping)
    return True


def _is_union(hint: Any) -> bool:
    """``Union[a, b]``, ``Optional[a]`` and ``a | b``."""
    return typing.get_origin(hint) in (typing.Union, getattr(types, 'UnionType', typing.Union))


def _describe(hint: Any) -> str:
    if _is_union(hint):
        return ' or '.join(_describe(a) for a in typing.get_args(hint))
    if hint is type(None):
        return 'None'
    return getattr(hint, '__name__', None) or str(hint).replace('typing.', '')


# -- the check ----------------------------------------------------------------------------

def check_cfg_options(cfg: Config, options: Optional[Mapping], source: str = '') -> None:
    """Raise :class:`ConfigError` for the first option that names an unknown key or
    gives a wrong type (see the module docstring). ``source``: the config file, for the
    message."""
    if not options:
        return
    work = copy.deepcopy(cfg)
    # a new ``type`` changes which keys its dict accepts: check and merge those first
    ordered = sorted(options.items(), key=lambda kv: str(kv[0]).rsplit('.', 1)[-1] != 'type')
    for full_key, value in ordered:
        if str(full_key).rsplit('.', 1)[-1] == 'type' and isinstance(value, str):
            _check_type_name(str(full_key), value)
        _check_option(work._cfg_dict, str(full_key), value, source or 'this config')
        work.merge_from_dict({full_key: value})


def _registered_names() -> List[str]:
    import mmdet.registry as mmdet_registry
    from mmengine.registry import Registry
    names = set()
    for name in dir(mmdet_registry):
        reg = getattr(mmdet_registry, name)
        while isinstance(reg, Registry):
            names.update(reg.module_dict)
            reg = reg.parent
    return sorted(names)


def _check_type_name(full_key: str, value: str) -> None:
    """A ``type`` set on the command line must name something registered."""
    if _registered(value):
        return
    import difflib
    close = difflib.get_close_matches(value, _registered_names(), n=3, cutoff=0.6)
    hint = f'; did you mean {" or ".join(close)}?' if close else ''
    raise ConfigError(f'--cfg-options {full_key}={value!r}: no such type is registered in '
                      f'mmdet, mmengine or this project{hint}')


def _check_option(root, full_key: str, value: Any, source: str) -> None:
    parts = full_key.split('.')
    node, path = root, []
    hint = inspect.Parameter.empty
    for i, part in enumerate(parts):
        if isinstance(node, (list, tuple)):
            if not part.isdigit():
                raise ConfigError(f'--cfg-options {full_key}: {_join(path)} is a list; '
                                  f'address its items by index ({_join(path)}.0...)')
            if int(part) >= len(node):
                raise ConfigError(f'--cfg-options {full_key}: {_join(path)} has '
                                  f'{len(node)} items, no index {part}')
            node, hint = node[int(part)], inspect.Parameter.empty
            path.append(part)
            continue
        if not isinstance(node, Mapping):
            raise ConfigError(f'--cfg-options {full_key}: {_join(path)} is {node!r}, not a '
                              f'dict: it has no key {part!r}')
        params, free = _accepted(node, path)
        if part not in node:
            if free or any(p in FREE_FORM for p in path):
                return  # a free-form dict: anything goes
            if params is None or part not in params:
                raise ConfigError(_unknown_key_message(full_key, node, path, part, params,
                                                       source))
            if i == len(parts) - 1:
                _check_value(full_key, value, params[part], None)
            return  # below a new key nothing exists to check against
        hint = params.get(part, inspect.Parameter.empty) if params else inspect.Parameter.empty
        node = node[part]
        path.append(part)
    _check_value(full_key, value, hint, node)


def _accepted(node: Mapping, path: List[str]) -> Tuple[Optional[dict], bool]:
    """(parameters a dict accepts as new keys, free-form?); None: only its own keys."""
    if not path:
        return {k: inspect.Parameter.empty for k in _top_level_params()}, False
    if 'type' in node:
        return _typed_params(node)
    if len(path) == 1 and path[0] in DATALOADERS:
        return _dataloader_params(), False
    return None, False


def _check_value(full_key: str, value: Any, hint: Any, current: Any) -> None:
    ok = _matches(value, hint)
    if ok is None:
        ok = _like(value, current)
    if not ok:
        expected = _describe(hint) if hint is not inspect.Parameter.empty else \
            type(current).__name__
        now = f' (now {current!r})' if current is not None else ''
        raise ConfigError(f'--cfg-options {full_key}={value!r}: expected {expected}'
                          f'{now}, got {type(value).__name__}')


def _unknown_key_message(full_key, node, path, part, params, source) -> str:
    import difflib
    known = sorted(set(node) | set(params or {}))
    close = difflib.get_close_matches(part, [str(k) for k in known], n=3)
    hint = f'; did you mean {" or ".join(_join(path + [c]) for c in close)}?' if close else '.'
    parent = _join(path) or 'the top level'
    kind = f' ({node["type"]})' if isinstance(node, Mapping) and 'type' in node else ''
    escape = (f' If the key is right, set it in a config file that inherits {source} '
              '(_base_): only --cfg-options are checked.')
    return f'--cfg-options {full_key}: unknown key {part!r} in {parent}{kind}{hint}{escape}'


# -- data paths ---------------------------------------------------------------------------

def check_data_paths(cfg: Config, dataloaders: Sequence[str] = DATALOADERS) -> None:
    """Raise :class:`ConfigError` naming the key and path when a local dataset folder or
    annotation file (of the given dataloaders and their evaluators) does not exist.

    Dataloaders that are absent or None (e.g. no validation) are skipped; remote paths
    (``s3://...``) are left to their backends.
    """
    def missing(path) -> bool:
        return isinstance(path, str) and '://' not in path and not osp.exists(path)

    for name in dataloaders:
        loader = cfg.get(name, None)
        if not loader or not loader.get('dataset'):
            continue
        for key, ds in _datasets(loader['dataset'], f'{name}.dataset'):
            root = ds.get('data_root', None) or ''
            if root and missing(root):
                raise ConfigError(f'{key}.data_root: folder not found: {root} (make the '
                                  f'dataset there, or pass --cfg-options {key}.data_root=PATH)')
            ann = ds.get('ann_file', None)
            if ann:
                full = ann if osp.isabs(ann) or '://' in ann else osp.join(root, ann)
                if missing(full):
                    raise ConfigError(f'{key}.ann_file: annotation file not found: {full}')
        evaluator = cfg.get(name.replace('dataloader', 'evaluator'), None)
        for i, metric in enumerate(evaluator if isinstance(evaluator, list) else [evaluator]):
            ann = metric.get('ann_file', None) if isinstance(metric, Mapping) else None
            if missing(ann):
                key = name.replace('dataloader', 'evaluator') + (
                    f'.{i}' if isinstance(evaluator, list) else '')
                raise ConfigError(f'{key}.ann_file: annotation file not found: {ann}')


def _datasets(ds: Mapping, key: str):
    """The dataset dict and those it wraps (``dataset``/``datasets`` of wrappers)."""
    yield key, ds
    inner = ds.get('dataset', None)
    if isinstance(inner, Mapping):
        yield from _datasets(inner, f'{key}.dataset')
    for i, sub in enumerate(ds.get('datasets', None) or []):
        if isinstance(sub, Mapping):
            yield from _datasets(sub, f'{key}.datasets.{i}')


# -- values -------------------------------------------------------------------------------

# (key pattern, rule, what it is). '*' matches one key or list index, '**' any number of
# them. Rules: 'int>=N', '>0', '>=0', 'int>=1|-1'. A key the config does not have is skipped.
VALUE_RULES = (
    ('*_dataloader.batch_size', 'int>=1', 'images per batch'),
    ('*_dataloader.num_workers', 'int>=0', 'data-loading worker processes'),
    ('optim_wrapper.optimizer.lr', '>0', 'the learning rate'),
    ('optim_wrapper.optimizer.weight_decay', '>=0', 'the weight decay'),
    ('optim_wrapper.clip_grad.max_norm', '>0', 'the gradient clipping norm'),
    ('optim_wrapper.paramwise_cfg.custom_keys.*.lr_mult', '>=0', 'an lr multiplier'),
    ('train_cfg.max_iters', 'int>=1', 'the training length'),
    ('train_cfg.max_epochs', 'int>=1', 'the training length'),
    ('train_cfg.val_interval', 'int>=1', 'the validation interval'),
    ('train_cfg.val_begin', 'int>=0', 'where validation begins'),
    ('default_hooks.checkpoint.interval', 'int>=1|-1',
     'the checkpoint interval (-1: only at the end)'),
    ('default_hooks.checkpoint.max_keep_ckpts', 'int>=-1',
     'how many checkpoints to keep (-1: all)'),
    ('default_hooks.logger.interval', 'int>=1', 'the logging interval'),
    ('log_processor.window_size', 'int>=1', 'the smoothing window'),
    ('param_scheduler.*.gamma', '>0', 'the lr decay factor'),
    ('param_scheduler.*.milestones.*', 'int>=0', 'an lr step'),
    ('auto_scale_lr.base_batch_size', 'int>=1', 'the base batch size'),
    ('model.num_queries', 'int>=1', 'the number of queries'),
    ('model.dn_cfg.group_cfg.num_dn_queries', 'int>=1', 'the number of denoising queries'),
    ('model.test_cfg.max_per_img', 'int>=1', 'the detections kept per image'),
    ('model.encoder.num_layers', 'int>=1', 'the encoder depth'),
    ('model.decoder.num_layers', 'int>=1', 'the decoder depth'),
    ('model.bbox_head.num_classes', 'int>=1', 'the number of classes'),
    ('model.backbone.patch_size', 'int>=1', 'the patch size'),
    ('model.backbone.model_kwargs.depth', 'int>=1', 'the ViT depth'),
    ('*_dataloader.dataset.pipeline.**.scale', 'int>=1', 'an image scale'),
    ('*_dataloader.dataset.pipeline.**.scales', 'int>=1', 'an image scale'),
    ('*_dataloader.dataset.pipeline.**.crop_size', 'int>=1', 'a crop size'),
)


def _walk(node, parts: List[str], path: List[str]):
    """(dotted path, value) of every leaf under ``node`` matching the pattern ``parts``."""
    if not parts:
        yield from _leaves(node, path)
        return
    head, rest = parts[0], parts[1:]
    children = (list(node.items()) if isinstance(node, Mapping) else
                list(enumerate(node)) if isinstance(node, (list, tuple)) else [])
    if head == '**':
        yield from _walk(node, rest, path)
        for k, child in children:
            if isinstance(child, (Mapping, list, tuple)):
                yield from _walk(child, parts, path + [str(k)])
        return
    for k, child in children:
        key = str(k)
        if head == '*' or key == head or (head.startswith('*') and key.endswith(head[1:])):
            yield from _walk(child, rest, path + [key])


def _leaves(value, path):
    if isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            yield from _leaves(v, path + [str(i)])
    else:
        yield _join(path), value


def _breaks(value, rule: str) -> Optional[str]:
    """Why ``value`` breaks ``rule``, or None."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f'expected a number, got {type(value).__name__} {value!r}'
    if isinstance(value, float) and not math.isfinite(value):
        return f'must be a finite number, got {value}'
    if rule.startswith('int'):
        if isinstance(value, float) and not value.is_integer():
            return f'must be a whole number, got {value}'
        bound = rule[len('int>='):]
        if '|' in bound:
            low, alt = (int(x) for x in bound.split('|'))
            return None if value >= low or value == alt else \
                f'must be >= {low} (or {alt}), got {value:g}'
        return None if value >= int(bound) else f'must be >= {bound}, got {value:g}'
    if rule == '>0':
        return None if value > 0 else f'must be > 0, got {value:g}'
    return None if value >= 0 else f'must be >= 0, got {value:g}'


def check_values(cfg: Config, options: Optional[Mapping] = None, source: str = '') -> None:
    """:class:`ConfigError` for the first numeric setting outside its range (0, negative,
    NaN, a string...), named as the user set it: the ``--cfg-options`` key, or the
    config file."""
    options = {str(k) for k in (options or {})}
    for pattern, rule, what in VALUE_RULES:
        for key, value in _walk(cfg._cfg_dict, pattern.split('.'), []):
            problem = _breaks(value, rule)
            if problem is None:
                continue
            given = next((o for o in options if key == o or key.startswith(o + '.')), None)
            if given == key:
                where = f'--cfg-options {key}'
            elif given:
                where = f'--cfg-options {given} ({key})'
            else:
                where = f'{key} in {source or "the config"}'
            raise ConfigError(f'{where}: {what} {problem}')
