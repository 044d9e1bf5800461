"""The package's import directions (README, Architecture) and its import-time effects.

Each module of ``projects/dino_dinov2`` belongs to one unit (a top-level module or a
subpackage). A unit imports only from itself and from units of a lower rank; units of the
same rank do not import each other. The tools call the package through ``cli`` (and
``deploy``), never ``engine``. Modules are built by type: none is re-classed and no method
re-bound after construction. Importing the package registers its modules in mmdet's
registries and changes nothing else process-wide: the loader for older checkpoints is
installed by the code paths that load (``CheckpointLoaderHook``, the tools).
"""
import ast
import os
import os.path as osp
import subprocess
import sys

from helpers import REPO

PACKAGE = 'projects.dino_dinov2'
ROOT = osp.join(REPO, 'projects', 'dino_dinov2')

# lowest first: what each unit may import is everything of a lower rank
RANKS = {
    'errors': 0,
    'upstream': 1,
    'checkpoint': 2,
    'original_checkpoint': 3,
    'models': 4, 'datasets': 4,
    'evaluation': 5,
    'engine': 6,
    'cli': 7,
    'deploy': 8,
}


def _py_files(top: str):
    for folder, _, files in os.walk(top):
        for name in sorted(files):
            if name.endswith('.py'):
                yield osp.join(folder, name)


def _modules():
    for path in _py_files(ROOT):
        yield osp.relpath(path, ROOT)[:-3].replace(os.sep, '.'), path


def _imports(rel: str, path: str):
    """(line, module imported) for every import of the package in the file, the lazy ones
    inside functions included; relative imports resolved."""
    parts = rel.split('.')
    package = parts[:-1] if parts[-1] != '__init__' else parts[:-1]
    tree = ast.parse(open(path).read(), path)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[:len(package) - node.level + 1]
                target = base + (node.module.split('.') if node.module else [])
                if not node.module:  # from . import x
                    for alias in node.names:
                        yield node.lineno, '.'.join(target + [alias.name])
                    continue
                yield node.lineno, '.'.join(target)
            elif node.module and node.module.startswith(PACKAGE):
                target = node.module[len(PACKAGE):].lstrip('.')
                if target:
                    yield node.lineno, target
                else:
                    for alias in node.names:
                        yield node.lineno, alias.name
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith(PACKAGE + '.'):
                    yield node.lineno, alias.name[len(PACKAGE) + 1:]


def test_every_unit_has_a_rank():
    units = {rel.split('.')[0] for rel, _ in _modules()} - {'__init__'}
    assert units == set(RANKS), 'a new unit: give it a rank here and in the README'


def test_imports_point_down_only():
    wrong = []
    for rel, path in _modules():
        unit = rel.split('.')[0]
        if unit == '__init__':
            continue  # the package root imports its subpackages (registration)
        for line, target in _imports(rel, path):
            other = target.split('.')[0]
            if other == unit:
                continue
            if other not in RANKS or RANKS[other] >= RANKS[unit]:
                wrong.append(f'{rel}.py:{line} imports {target}')
    assert not wrong, '\n'.join(wrong)


def test_the_tools_do_not_import_engine():
    wrong = []
    for path in _py_files(osp.join(REPO, 'tools')):
        for i, text in enumerate(open(path), 1):
            if f'{PACKAGE}.engine' in text or f'{PACKAGE} import engine' in text:
                wrong.append(f'{osp.relpath(path, REPO)}:{i}')
    assert not wrong, wrong


def test_nothing_is_re_classed_or_re_bound():
    """No ``__class__`` assignment and no ``types.MethodType`` in the package: a config that
    names a type gets that type."""
    wrong = []
    for rel, path in _modules():
        for node in ast.walk(ast.parse(open(path).read(), path)):
            if isinstance(node, ast.Assign) and any(
                    isinstance(t, ast.Attribute) and t.attr == '__class__' for t in node.targets):
                wrong.append(f'{rel}.py:{node.lineno} assigns __class__')
            if isinstance(node, ast.Attribute) and node.attr == 'MethodType':
                wrong.append(f'{rel}.py:{node.lineno} uses MethodType')
    assert not wrong, wrong


def test_the_tests_import_helpers_not_conftest():
    """``conftest.py`` holds fixtures; what tests import lives in ``tests/helpers.py``."""
    wrong = []
    for path in _py_files(osp.join(REPO, 'tests')):
        wrong += [f'{osp.relpath(path, REPO)}:{node.lineno}'
                  for node in ast.walk(ast.parse(open(path).read()))
                  if isinstance(node, ast.ImportFrom) and node.module == 'conftest'
                  or isinstance(node, ast.Import) and any(a.name == 'conftest' for a in node.names)]
    assert not wrong, wrong


def test_the_readme_states_the_order():
    readme = open(osp.join(REPO, 'README.md')).read()
    line = ' < '.join(sorted(RANKS, key=lambda u: (RANKS[u], u)))
    assert line.replace('datasets < models', 'models, datasets') in readme


_PROBE = r'''
import importlib, pkgutil, sys
import torch
import mmdet.apis, mmdet.models, mmengine.runner, timm  # they add safe globals of their own
from mmengine.runner.checkpoint import CheckpointLoader
before_loaders = dict(CheckpointLoader._schemes)
get = getattr(torch.serialization, 'get_safe_globals', lambda: [])
before_globals = list(get())
import projects.dino_dinov2 as pkg
names = [m.name for m in pkgutil.walk_packages(pkg.__path__, pkg.__name__ + '.')
         if not m.name.endswith('__main__')]
for name in names:
    importlib.import_module(name)
assert dict(CheckpointLoader._schemes) == before_loaders, 'checkpoint loaders changed'
assert list(get()) == before_globals, 'torch safe globals changed'
from projects.dino_dinov2.checkpoint import install_checkpoint_loader, load_local_checkpoint
install_checkpoint_loader()
assert CheckpointLoader._schemes[''] is load_local_checkpoint
print('imported', len(names), 'modules')
'''


def test_importing_the_package_changes_no_checkpoint_loader():
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get('PYTHONPATH', ''))
    out = subprocess.run([sys.executable, '-c', _PROBE], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert int(out.stdout.split()[1]) > 50
