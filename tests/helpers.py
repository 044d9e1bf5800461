"""The tests' helpers: the tools in this process, free ports, tiny runs and the files
they write (scalars, W&B run files). ``config_runs.py`` beside it makes user-shaped data
for the config runs.

Also imported by training subprocesses (``custom_imports``, with this folder on
PYTHONPATH) for :class:`RankWeightsHook`, :class:`SignalAtIterationHook` and
:class:`ProgressHook`.
"""
import glob
import importlib.util
import json
import logging
import os
import os.path as osp
import socket
import struct
import subprocess
import sys
import time
from contextlib import contextmanager

import torch
from mmengine.hooks import Hook
from mmengine.registry import HOOKS

HERE = osp.dirname(osp.abspath(__file__))
REPO = osp.dirname(HERE)
SYNTHETIC_CONFIG = osp.join(REPO, 'configs', 'dino_dinov2_synthetic.py')


def data_cfg_options(data_root: str) -> list:
    """``--cfg-options`` pointing the synthetic config at another data folder."""
    data_root = data_root.rstrip('/') + '/'
    return [
        f'train_dataloader.dataset.data_root={data_root}',
        f'val_dataloader.dataset.data_root={data_root}',
        f'test_dataloader.dataset.data_root={data_root}',
        f'val_evaluator.ann_file={data_root}annotations/instances_val.json',
        f'test_evaluator.ann_file={data_root}annotations/instances_val.json',
    ]


def run_tool(args, cwd=REPO, env=None, timeout=900, check=True):
    """Run a command-line tool in a fresh process; returns the CompletedProcess."""
    full_env = dict(os.environ, PYTHONUNBUFFERED='1', **(env or {}))
    proc = subprocess.run(args, cwd=cwd, env=full_env, capture_output=True, text=True,
                          timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f'{args} exited {proc.returncode}\n--- stdout\n'
                             f'{proc.stdout[-4000:]}\n--- stderr\n{proc.stderr[-6000:]}')
    return proc


@contextmanager
def captured_log():
    """Messages of mmengine's current logger while the block runs."""
    from mmengine.logging import MMLogger
    records = []

    class ListHandler(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    logger = MMLogger.get_current_instance()
    handler = ListHandler(level=logging.DEBUG)
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)


def init_weights_quietly(model):
    """``model.init_weights()`` without its INFO line per parameter (DINO's level
    embedding is allocated uninitialised and set only there)."""
    from mmengine.logging import MMLogger
    logger = MMLogger.get_current_instance()
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        model.init_weights()
    finally:
        logger.setLevel(level)
    return model


def clean_env(extra=None) -> dict:
    """This process's environment without W&B or launcher variables, plus ``extra``."""
    drop = ('WANDB_', 'SLURM_')
    keep = {k: v for k, v in os.environ.items()
            if not k.startswith(drop) and k not in ('RANK', 'WORLD_SIZE', 'LOCAL_RANK',
                                                    'MASTER_ADDR', 'MASTER_PORT')}
    return dict(keep, PYTHONUNBUFFERED='1', **(extra or {}))


def load_tool(name: str):
    """``tools/<name>.py`` as a module (its ``main(argv)`` runs in this process)."""
    spec = importlib.util.spec_from_file_location(f'dino_tool_{name}',
                                                  osp.join(REPO, 'tools', f'{name}.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_export(argv, capsys, code: int = 0):
    """``tools/export.py argv`` as its command line ends (a user error: one line, exit 2);
    asserts the exit code and returns what it printed (``capsys.readouterr()``)."""
    import pytest

    from projects.dino_dinov2.cli import exit_on_user_error
    with pytest.raises(SystemExit) as e:
        with exit_on_user_error():
            raise SystemExit(load_tool('export').main(argv))
    out = capsys.readouterr()
    assert e.value.code == code, out.out + out.err
    return out


def gated_int8_export(synthetic_run: str, synthetic_data: str, out: str, *options: str):
    """The 2-epoch synthetic detector through ``tools/export.py --int8`` at 128x128,
    calibrated on its training images, gated (``--max-drop 0.05``) on its val split, with
    ``options`` (the quantizer's); returns (checkpoint, out, the log's lines joined)."""
    ckpt = osp.join(synthetic_run, 'epoch_2.pth')
    with captured_log() as log:
        code = load_tool('export').main([
            SYNTHETIC_CONFIG, ckpt, '--out', out, '--shape', '128x128', '--int8',
            '--calib', synthetic_data, *options, '--max-drop', '0.05', '--val',
            synthetic_data])
    assert code == 0
    return ckpt, out, '\n'.join(log)


def exit_code(main, argv) -> int:
    """A tool's ``main(argv)`` run as its ``__main__`` block runs it (inside
    ``exit_on_user_error``): the exit status it would end with (0, 2 for bad input, 1 for a
    bug), the message on stderr."""
    from projects.dino_dinov2.cli.error_exit import exit_on_user_error
    try:
        with exit_on_user_error():
            return main(argv) or 0
    except SystemExit as e:
        return e.code


def free_port() -> int:
    """A TCP port free on this machine now (for MASTER_PORT / PORT)."""
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


# The one tiny model of the tests (1 ViT block, 1+1 DINO layers, 10 queries, 4 denoising,
# 10 detections per image): they check running, not learning, on 2 shared CPU cores.
TINY_MODEL = {
    'model.backbone.model_kwargs.depth': 1, 'model.encoder.num_layers': 1,
    'model.decoder.num_layers': 1, 'model.num_queries': 10,
    'model.dn_cfg.group_cfg.num_dn_queries': 4, 'model.test_cfg.max_per_img': 10,
}
TINY_MODEL_OPTIONS = [f'{key}={value}' for key, value in TINY_MODEL.items()]  # --cfg-options


def tiny_run_options(data_root: str, epochs: int, val: bool = False) -> list:
    """``--cfg-options`` for a short run on ``data_root``: log every iteration, unsmoothed."""
    return [
        *data_cfg_options(data_root),
        f'train_cfg.max_epochs={epochs}',
        f'train_cfg.val_begin={epochs if val else 10 ** 6}', f'train_cfg.val_interval={epochs}',
        'default_hooks.logger.interval=1', 'log_processor.window_size=1',
        f'default_hooks.checkpoint.interval={epochs}',
        'default_hooks.checkpoint.save_best=None',
        *TINY_MODEL_OPTIONS,
    ]


def isolated_wandb_env(root: str, mode: str = 'offline') -> dict:
    """Environment for a real wandb that writes under ``root`` and reads no credentials."""
    os.makedirs(root, exist_ok=True)
    return {'WANDB_DIR': root, 'WANDB_MODE': mode, 'WANDB_CONFIG_DIR': osp.join(root, 'cfg'),
            'WANDB_CACHE_DIR': osp.join(root, 'cache'), 'WANDB_DATA_DIR': osp.join(root, 'data'),
            'NETRC': osp.join(root, 'no-netrc'),
            'WANDB_SILENT': 'true'}


def read_scalars(work_dir: str) -> dict:
    """Training rows of every ``scalars.json`` under ``work_dir``, by iteration (last wins)."""
    rows = {}
    for path in sorted(glob.glob(osp.join(work_dir, '*', 'vis_data', 'scalars.json'))):
        with open(path) as f:
            for line in f:
                row = json.loads(line)
                if 'loss' in row and 'iter' in row:
                    rows[row['iter']] = row
    return rows


def wait_for_iteration(work_dir: str, iteration: int, proc, timeout: float = 600) -> int:
    """Block until the run in ``work_dir`` logged ``iteration``; returns the last logged."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        rows = read_scalars(work_dir)
        if rows and max(rows) >= iteration:
            return max(rows)
        if proc.poll() is not None:
            raise AssertionError(f'training exited ({proc.returncode}) before iteration '
                                 f'{iteration}')
        time.sleep(0.1)
    raise AssertionError(f'iteration {iteration} not reached in {timeout} s')


# --- W&B offline run files ----------------------------------------------------------------
# wandb >= 0.19 writes runs from its Go core and no longer ships a Python reader for the
# .wandb transaction log; the format is LevelDB's log format (32 KiB blocks of records
# with a 7-byte header) behind a 7-byte ':W&B' file header, each record a protobuf Record.

_BLOCK = 32768


def wandb_records(path: str):
    """The protobuf ``Record``s of a ``run-<id>.wandb`` file, in order."""
    from wandb.proto import wandb_internal_pb2 as pb
    data = open(path, 'rb').read()
    ident, _magic, _version = struct.unpack('<4sHB', data[:7])
    assert ident == b':W&B', f'{path}: not a W&B transaction log'
    pos, buf = 7, b''
    while pos + 7 <= len(data):
        left = _BLOCK - pos % _BLOCK
        if left < 7:  # block trailer
            pos += left
            continue
        _crc, length, kind = struct.unpack('<IHB', data[pos:pos + 7])
        pos += 7
        chunk, pos = data[pos:pos + length], pos + length
        if kind == 0:
            continue
        buf = chunk if kind in (1, 2) else buf + chunk  # FULL/FIRST start a record
        if kind in (1, 4):  # FULL/LAST end one
            record = pb.Record()
            record.ParseFromString(buf)
            yield record
            buf = b''


def offline_runs(root: str) -> list:
    """``offline-run-*`` folders under ``root`` (any depth), oldest first."""
    runs = glob.glob(osp.join(root, '**', 'offline-run-*'), recursive=True)
    return sorted((r for r in runs if osp.isdir(r)), key=osp.basename)


def wandb_run(run_dir: str) -> dict:
    """Run id, config keys and history rows (values decoded) of an offline run folder."""
    files = glob.glob(osp.join(run_dir, 'run-*.wandb'))
    assert len(files) == 1, files
    out = {'run_id': None, 'config': {}, 'history': [], 'metrics': []}
    for rec in wandb_records(files[0]):
        kind = rec.WhichOneof('record_type')
        if kind == 'run':
            out['run_id'] = rec.run.run_id
            out['config'].update({u.key: u.value_json for u in rec.run.config.update})
        elif kind == 'config':
            out['config'].update({u.key: u.value_json for u in rec.config.update})
        elif kind == 'history':
            out['history'].append({(i.key or '/'.join(i.nested_key)): json.loads(i.value_json)
                                   for i in rec.history.item})
        elif kind == 'metric':
            out['metrics'].append((rec.metric.name or rec.metric.glob_name,
                                   rec.metric.step_metric))
    return out


@HOOKS.register_module()
class RankWeightsHook(Hook):
    """Saves each rank's final weights to ``<work_dir>/rank<R>_weights.pth``."""

    def after_train(self, runner):
        model = runner.model.module if hasattr(runner.model, 'module') else runner.model
        torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()},
                   osp.join(runner.work_dir, f'rank{runner.rank}_weights.pth'))


@HOOKS.register_module()
class SignalAtIterationHook(Hook):
    """Sends ``signal`` to this process after training iteration ``iteration`` (1-based) on
    the given ranks (all when None): a scheduler's signal landing at a known iteration, to
    one process of a job or to all. The PreemptionHook (priority VERY_LOW) sees it after the
    same iteration."""

    def __init__(self, iteration: int, signal: str = 'SIGTERM', ranks=None):
        self.iteration = iteration
        self.signal = signal
        self.ranks = ranks

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        import signal as signal_module
        if runner.iter + 1 == self.iteration and (self.ranks is None
                                                   or runner.rank in self.ranks):
            os.kill(os.getpid(), getattr(signal_module, self.signal))


@HOOKS.register_module()
class ProgressHook(Hook):
    """Writes the iterations done to ``<work_dir>/progress`` (rank 0) after each training
    iteration, then waits ``delay_s``: a run slow enough to be signalled mid-way."""

    def __init__(self, delay_s: float = 0.0):
        self.delay_s = delay_s

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        if runner.rank == 0:
            tmp = osp.join(runner.work_dir, 'progress.tmp')
            with open(tmp, 'w') as f:
                f.write(str(runner.iter + 1))
            os.replace(tmp, osp.join(runner.work_dir, 'progress'))
        time.sleep(self.delay_s)


def hooked_config(path, *hooks: str) -> str:
    """Write a config at ``path``: the synthetic one plus the test hooks ``hooks`` (each
    ``"dict(type=..., ...)"``) from this module; returns the path."""
    with open(path, 'w') as f:
        f.write(f'_base_ = [{SYNTHETIC_CONFIG!r}]\n'
                "custom_imports = dict(imports=['projects.dino_dinov2', 'helpers'], "
                'allow_failed_imports=False)\n'
                f"custom_hooks = [{', '.join(hooks)}]\n")
    return str(path)


def pythonpath_with_tests() -> str:
    """PYTHONPATH for a training subprocess that imports this module (its test hooks)."""
    return os.pathsep.join(filter(None, [HERE, os.environ.get('PYTHONPATH')]))


def read_progress(work_dir: str) -> int:
    try:
        with open(osp.join(work_dir, 'progress')) as f:
            return int(f.read())
    except (OSError, ValueError):
        return 0


def read_checkpoint(path: str, map_location='cpu'):
    """A checkpoint as the project reads it (``torch.load(weights_only=True)`` with
    MMEngine's classes allowed): what the tests inspect of a run's files."""
    from projects.dino_dinov2.checkpoint import load_local_checkpoint
    return load_local_checkpoint(str(path), map_location=map_location)


_OPEN_PLAIN = r'''
import json, sys
import torch
paths, config, image = json.loads(sys.argv[1])
for path in paths:  # torch's own safe loader, nothing allowed beyond its defaults
    torch.load(path, map_location='cpu', weights_only=True)
if config:
    import projects.dino_dinov2  # noqa: F401  registers the modules, installs no loader
    from mmdet.apis import inference_detector, init_detector
    from mmengine.runner.checkpoint import CheckpointLoader
    assert CheckpointLoader._schemes[''].__module__ == 'mmengine.runner.checkpoint'
    from mmdet.apis import DetInferencer
    for path in paths:
        model = init_detector(config, path, device='cpu')
        result = inference_detector(model, image)
        print(path, len(result.pred_instances), model.dataset_meta['classes'])
        out = DetInferencer(model=config, weights=path, device='cpu', show_progress=False)(
            image, no_save_vis=True)
        print('DetInferencer', len(out['predictions'][0]['labels']))
'''


def open_without_the_plugin(paths, config=None, image=None):
    """In a fresh process: ``torch.load(weights_only=True)`` of each checkpoint with torch's
    own allow-list, then (with ``config``) mmdet's ``init_detector``,
    ``inference_detector`` and ``DetInferencer`` on ``image`` with nothing installed by
    this project. Returns the CompletedProcess."""
    return subprocess.run([sys.executable, '-c', _OPEN_PLAIN,
                           json.dumps([list(map(str, paths)), config, image])],
                          cwd=REPO, capture_output=True, text=True, timeout=600)


def names(message: str, *parts: str) -> bool:
    """Whether ``message`` is one line that names each of ``parts`` (the file, key or value
    at fault and what to do): the tests check what an error says, not its wording."""
    return '\n' not in message.strip() and all(str(part) in message for part in parts)
