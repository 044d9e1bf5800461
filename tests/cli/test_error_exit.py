"""What tools/train.py and tools/test.py print for bad input: one line 'error: ...' that
names the file, key or value, exit status 2, no traceback, nothing trained.

Failures before training starts run the tools' ``main`` in this process (as their
``__main__`` block does, inside ``exit_on_user_error``); the ``__main__`` wiring itself
and failures once the run is under way (signal handlers installed, DataLoader workers)
run in a subprocess.
"""
import json
import os.path as osp
import shutil
import subprocess
import sys

import pytest
import timm
import torch

from helpers import REPO, SYNTHETIC_CONFIG, clean_env, load_tool, names, tiny_run_options
from projects.dino_dinov2.cli import exit_on_user_error


def _error_line(argv, tool, monkeypatch, capsys):
    monkeypatch.setenv('LOCAL_RANK', '0')  # parse_args sets it: keep this process clean
    with pytest.raises(SystemExit) as e:
        with exit_on_user_error():
            load_tool(tool).main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith('error: ')]
    assert len(lines) == 1, err
    return lines[0]


def _train_args(work_dir, data_root, *options):
    return [SYNTHETIC_CONFIG, '--work-dir', str(work_dir), '--batch-size', '2',
            '--cfg-options', *tiny_run_options(data_root, epochs=1), *options]


def _subprocess(args, tmp_path):
    proc = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True,
                          env=clean_env({'OMP_NUM_THREADS': '1'}), timeout=900)
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith('error: ')]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-3000:]
    assert 'Traceback' not in proc.stderr, proc.stderr[-3000:]
    return lines[0], proc.stdout


def test_main_block_prints_one_line_and_exits_2(tiny_synthetic_data, tmp_path):
    line, _ = _subprocess(['tools/train.py', *_train_args(
        tmp_path, tiny_synthetic_data, 'train_cfg.max_epoch=24')], tmp_path)
    assert line.startswith("error: --cfg-options train_cfg.max_epoch: unknown key "
                           "'max_epoch' in train_cfg (ResumableEpochBasedTrainLoop); did you "
                           'mean train_cfg.max_epochs?')


def test_missing_data_root(tmp_path, monkeypatch, capsys):
    line = _error_line(_train_args(tmp_path / 'work', str(tmp_path / 'no_data')), 'train',
                       monkeypatch, capsys)
    assert line.startswith('error: ') and names(
        line, 'train_dataloader.dataset.data_root', f'{tmp_path}/no_data/', 'not found')
    assert not osp.exists(tmp_path / 'work' / 'last_checkpoint')


def test_annotation_file_not_json(tiny_synthetic_data, tmp_path, monkeypatch, capsys):
    data = tmp_path / 'data'
    shutil.copytree(tiny_synthetic_data, data)
    ann = data / 'annotations' / 'instances_train.json'
    ann.write_text(ann.read_text()[:-10])  # cut short
    line = _error_line(_train_args(tmp_path / 'work', str(data)), 'train', monkeypatch,
                       capsys)
    assert line.startswith(f'error: {ann}: not valid JSON (')


def test_annotation_file_wrong_schema(tiny_synthetic_data, tmp_path, monkeypatch, capsys):
    data = tmp_path / 'data'
    shutil.copytree(tiny_synthetic_data, data)
    ann = data / 'annotations' / 'instances_train.json'
    coco = json.loads(ann.read_text())
    coco['annotations'][0]['bbox'] = [1, 2, 3]
    ann.write_text(json.dumps(coco))
    line = _error_line(_train_args(tmp_path / 'work', str(data)), 'train', monkeypatch,
                       capsys)
    assert line.startswith(f'error: {ann}: annotations[0] (id 1): "bbox" is [1, 2, 3], '
                           'expected a list of 4 numbers [x, y, w, h] (COCO format: ')


@pytest.fixture(scope='module')
def weight_files(tmp_path_factory):
    root = tmp_path_factory.mktemp('weights')
    torch.manual_seed(0)
    # the synthetic config's backbone is a 192-wide ViT; this file is a 384-wide one
    torch.save(timm.create_model('vit_small_patch14_dinov2', pretrained=False, depth=1,
                                 num_classes=0).state_dict(), root / 'vit_s_384.pth')
    (root / 'notes.pth').write_text('not a checkpoint')
    return root


@pytest.mark.parametrize('name, message', [
    ('vit_s_384.pth', "{path} does not match the backbone: 20 with wrong shape, first "
     "'cls_token': file (1, 1, 384) vs model (1, 1, 192)"),
    ('notes.pth', '{path} is not a readable weight file (UnpicklingError: '),
    ('missing.pth', 'backbone weight file not found: {path}'),
])
def test_backbone_weight_file(weight_files, tiny_synthetic_data, tmp_path, monkeypatch,
                              capsys, name, message):
    path = weight_files / name
    line = _error_line(_train_args(tmp_path, tiny_synthetic_data,
                                   f'model.backbone.pretrained={path}'), 'train',
                       monkeypatch, capsys)
    assert line.startswith('error: ' + message.format(path=path)), line


@pytest.mark.parametrize('tool', ['train', 'test'])
def test_truncated_checkpoint_in_the_tools(tool, tiny_synthetic_data, tmp_path, monkeypatch,
                                           capsys):
    """``train.py --resume`` and ``test.py`` name the truncated file and the others there;
    the work dir gets no pointer (no silent fresh start)."""
    good = tmp_path / 'epoch_1.pth'
    torch.save({'state_dict': {'w': torch.zeros(1000)}}, good)
    cut = tmp_path / 'epoch_2.pth'
    cut.write_bytes(good.read_bytes()[:3000])
    work = tmp_path / 'work'
    if tool == 'train':
        argv, prefix = _train_args(work, tiny_synthetic_data, '--resume', str(cut)), '--resume: '
    else:
        argv, prefix = [SYNTHETIC_CONFIG, str(cut), '--work-dir', str(work), '--cfg-options',
                        *tiny_run_options(tiny_synthetic_data, 1)], ''
    line = _error_line(argv, tool, monkeypatch, capsys)
    assert line.startswith(f'error: {prefix}') and names(
        line, cut, 'truncated', 'other checkpoints there: epoch_1.pth')
    assert not osp.exists(work / 'last_checkpoint')


def test_resume_from_checkpoint_with_pickled_object(tiny_synthetic_data, tmp_path,
                                                    monkeypatch, capsys):
    """Refused when the Runner reads it (the archive itself is complete)."""
    evil = tmp_path / 'epoch_1.pth'
    marker = tmp_path / 'code_ran'
    code = ('import os, torch\n'
            'class P:\n'
            f'    def __reduce__(self): return (os.mkdir, ({str(marker)!r},))\n'
            f'torch.save({{"meta": {{"epoch": 1, "iter": 4}}, "state_dict": {{}}, '
            f'"x": P()}}, {str(evil)!r})\n')
    subprocess.run([sys.executable, '-c', code], check=True)
    line = _error_line([*_train_args(tmp_path / 'work', tiny_synthetic_data), '--resume',
                        str(evil)], 'train', monkeypatch, capsys)
    assert line.startswith(f'error: refused to load {evil}: it holds a pickled object')
    assert 'posix.mkdir' in line and 'weights_only=True' in line
    assert not marker.exists() and not (tmp_path / 'work' / 'epoch_2.pth').exists()


def test_corrupt_image_in_a_dataloader_worker(tiny_synthetic_data, tmp_path, monkeypatch,
                                              capsys):
    """The worker's exception reaches the tool as the same one line."""
    data = tmp_path / 'data'
    shutil.copytree(tiny_synthetic_data, data)
    bad = sorted((data / 'train').iterdir())[3]
    bad.write_bytes(bad.read_bytes()[:100])
    argv = _train_args(tmp_path / 'work', str(data), 'train_dataloader.num_workers=1',
                       'train_dataloader.persistent_workers=False')
    line = _error_line(argv, 'train', monkeypatch, capsys)
    assert line.startswith('error: ') and names(line, bad, 'cannot decode the image')
    log = open(next((tmp_path / 'work').glob('*/*.log'))).read()
    assert log.rstrip().endswith(f'{bad}: cannot decode the image (corrupt, truncated or not '
                                 'an image)')  # also in the run's log file


def test_resume_with_nothing_to_resume_says_so(tiny_synthetic_data, tmp_path, monkeypatch,
                                                capsys):
    """A typo in --work-dir: one line naming the folder, not a silent new run."""
    work = tmp_path / 'typo'
    line = _error_line(_train_args(work, tiny_synthetic_data) + ['--resume'], 'train',
                       monkeypatch, capsys)
    assert line.startswith(f'error: --resume: nothing to resume in {work}')
    assert '--resume auto' in line


def test_resume_auto_starts_a_new_run_when_there_is_nothing(tmp_path):
    from projects.dino_dinov2.cli import load_config, set_resume
    cfg = load_config(SYNTHETIC_CONFIG)
    cfg.work_dir = str(tmp_path / 'first_job')
    set_resume(cfg, 'auto')
    assert cfg.resume is False and cfg.load_from is None  # no 'resumed from None'
    assert ['--resume auto: no checkpoint in' in line
            for hook in cfg.custom_hooks if hook['type'] == 'RunInfoHook'
            for line in hook['lines']] == [True]
