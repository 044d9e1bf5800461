"""Classes of bad input, not instances (docs/robustness.md): wrong checkpoint files to each
flag that takes one, the environment, data at the edges. Each case asserts the exit status,
that the last line names the file or key and what to do, and that no checkpoint already
written changed."""
import errno
import hashlib
import json
import os
import os.path as osp
import shutil

import numpy as np
import pytest
import timm
import torch
from PIL import Image

from helpers import (REPO, SYNTHETIC_CONFIG, TINY_MODEL_OPTIONS, data_cfg_options, load_tool,
                     names, read_checkpoint, tiny_run_options)
from projects.dino_dinov2.cli import exit_on_user_error


def _digest(folder):
    """{file: sha1} of every checkpoint (and pointer) in ``folder``."""
    out = {}
    for name in sorted(os.listdir(folder)) if osp.isdir(folder) else []:
        path = osp.join(folder, name)
        if osp.isfile(path) and (name.endswith('.pth') or name == 'last_checkpoint'):
            out[name] = hashlib.sha1(open(path, 'rb').read()).hexdigest()
    return out


def _run(tool, argv, monkeypatch, capsys, code=2):
    """The tool's main as its __main__ block runs it; returns the last stderr line."""
    monkeypatch.setenv('LOCAL_RANK', '0')
    with pytest.raises(SystemExit) as e:
        with exit_on_user_error():
            load_tool(tool).main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == code, err[-5:]
    assert err and err[-1].startswith('error: '), err[-5:]
    assert 'Traceback' not in '\n'.join(err)
    return err[-1]


@pytest.fixture(scope='module')
def files(synthetic_run, tmp_path_factory):
    """Files a user mistakes for a checkpoint of the (tiny) synthetic run."""
    root = tmp_path_factory.mktemp('wrong_files')
    out = {'other config': osp.join(synthetic_run, 'epoch_2.pth')}  # the default-size model
    ckpt = read_checkpoint(out['other config'], map_location='cpu')
    torch.save(ckpt['state_dict'], root / 'plain.pth')
    out['plain state dict'] = str(root / 'plain.pth')
    torch.save(timm.create_model('vit_small_patch14_dinov2', pretrained=False,
                                 depth=1).state_dict(), root / 'timm.pth')
    out['timm weights'] = str(root / 'timm.pth')
    torch.save({'model': {'backbone.net.blocks.0.attn.qkv.weight': torch.zeros(3, 3)},
                '__author__': 'Detectron2 Model Zoo', 'iteration': 90000}, root / 'd2.pth')
    out['detectron2'] = str(root / 'd2.pth')
    (root / 'empty.pth').write_bytes(b'')
    out['empty file'] = str(root / 'empty.pth')
    os.makedirs(root / 'folder', exist_ok=True)
    out['directory'] = str(root / 'folder')
    return out


# what the last line says, per file and flag: (what the file is, what to do)
EXPECTED = {
    ('other config', '--resume'): ('a checkpoint of another model', '--load-from'),
    ('plain state dict', '--resume'): ('the weights of a detector, without training state',
                                       '--load-from'),
    ('timm weights', '--resume'): ('backbone (ViT) weights', 'model.backbone.pretrained='),
    ('detectron2', '--resume'): ('a detectron2/detrex checkpoint', 'tools/convert_original.py'),
    ('empty file', '--resume'): ('is empty (0 bytes)', ''),
    ('directory', '--resume'): ('is a folder, not a checkpoint file', ''),
    ('other config', '--load-from'): ('does not fit this model', 'checkpoint of this config'),
    ('timm weights', '--load-from'): ('backbone (ViT) weights', 'model.backbone.pretrained='),
    ('detectron2', '--load-from'): ('a detectron2/detrex checkpoint, but not of the original '
                                    'DINO', 'transformer.level_embeds'),
    ('empty file', '--load-from'): ('is empty (0 bytes)', ''),
    ('directory', '--load-from'): ('is a folder', ''),
    ('other config', 'pretrained'): ('holds a whole detector', '--load-from'),
    ('plain state dict', 'pretrained'): ('holds a whole detector', '--load-from'),
    ('detectron2', 'pretrained'): ('a detectron2/detrex checkpoint', "timm's or Meta's"),
    ('empty file', 'pretrained'): ('is empty (0 bytes)', ''),
    ('directory', 'pretrained'): ('is a folder', ''),
}


@pytest.mark.parametrize('kind, flag', sorted(EXPECTED))
def test_wrong_checkpoint_files(kind, flag, files, tiny_synthetic_data, tmp_path, monkeypatch,
                                capsys):
    work = tmp_path / 'work'
    work.mkdir()
    shutil.copy(files['other config'], work / 'keep.pth')  # a checkpoint already written
    before = _digest(work)
    path = files[kind]
    options = tiny_run_options(tiny_synthetic_data, epochs=1)
    if flag == 'pretrained':
        argv = ['--cfg-options', *options, f'model.backbone.pretrained={path}']
    else:
        argv = [flag, path, '--cfg-options', *options]
    line = _run('train', [SYNTHETIC_CONFIG, '--work-dir', str(work), *argv], monkeypatch,
                capsys)
    what, todo = EXPECTED[kind, flag]
    assert path in line and what in line and todo in line, line
    assert _digest(work) == before


def test_test_tool_with_a_checkpoint_of_another_model(files, tiny_synthetic_data, tmp_path,
                                                      monkeypatch, capsys):
    line = _run('test', [SYNTHETIC_CONFIG, files['other config'], '--work-dir', str(tmp_path),
                         '--cfg-options', *data_cfg_options(tiny_synthetic_data),
                         *TINY_MODEL_OPTIONS], monkeypatch, capsys)
    assert 'a checkpoint of another model' in line and 'config it was trained with' in line


# -- the environment ----------------------------------------------------------------------

def test_work_dir_that_cannot_be_created(tiny_synthetic_data, tmp_path, monkeypatch, capsys):
    blocker = tmp_path / 'a_file'
    blocker.write_text('')
    line = _run('train', [SYNTHETIC_CONFIG, '--work-dir', str(blocker / 'work'),
                          '--cfg-options', *tiny_run_options(tiny_synthetic_data, epochs=1)],
                monkeypatch, capsys)
    assert line.startswith(f'error: work dir {blocker}/work cannot be created or written')
    assert 'choose another with --work-dir' in line


def test_disk_full_while_writing_a_checkpoint(tiny_synthetic_data, tmp_path, monkeypatch,
                                              capsys):
    """ENOSPC on the second checkpoint: the first and the pointer stay as they were."""
    from projects.dino_dinov2.upstream import atomic_checkpoint
    real = atomic_checkpoint.atomic_write

    def full_disk(data, path, **kwargs):
        if osp.basename(str(path)) == 'epoch_2.pth':
            raise OSError(errno.ENOSPC, 'No space left on device', str(path))
        return real(data, path, **kwargs)

    work = tmp_path / 'work'
    options = tiny_run_options(tiny_synthetic_data, epochs=2)
    options = [o for o in options if not o.startswith('default_hooks.checkpoint.interval')]
    argv = [SYNTHETIC_CONFIG, '--work-dir', str(work), '--batch-size', '4', '--cfg-options',
            *options, 'default_hooks.checkpoint.interval=1']
    monkeypatch.setattr(atomic_checkpoint, 'atomic_write', full_disk)
    line = _run('train', argv, monkeypatch, capsys)
    assert 'could not write checkpoint' in line and 'epoch_2.pth: No space left on device' in line
    assert 'epoch_1.pth is intact and last_checkpoint still names it' in line
    assert 'free space there and continue with --resume' in line
    assert open(work / 'last_checkpoint').read().strip().endswith('epoch_1.pth')
    assert not osp.exists(work / 'epoch_2.pth')
    assert not [n for n in os.listdir(work) if '.tmp-' in n]
    assert read_checkpoint(work / 'epoch_1.pth', map_location='cpu')['meta']['epoch'] == 1


def test_port_in_use_for_dist_train(tmp_path):
    import socket
    import subprocess
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        s.listen()
        port = s.getsockname()[1]
        proc = subprocess.run(['bash', 'tools/dist_train.sh', SYNTHETIC_CONFIG, '2'], cwd=REPO,
                              env=dict(os.environ, PORT=str(port)), capture_output=True,
                              text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith(
        f'error: port {port} is in use on this node (another job?): set PORT')


@pytest.mark.parametrize('env, says', [
    (dict(RANK='0', WORLD_SIZE='two'), "WORLD_SIZE='two' is not an integer"),
    (dict(RANK='3', WORLD_SIZE='2', MASTER_ADDR='127.0.0.1', MASTER_PORT='29500'),
     'need WORLD_SIZE >= 1 and 0 <= RANK < WORLD_SIZE'),
    (dict(RANK='0', WORLD_SIZE='2', MASTER_ADDR='127.0.0.1', MASTER_PORT='99999'),
     'MASTER_PORT=99999 is not a TCP port'),
])
def test_launcher_variables_set_to_nonsense(env, says, tiny_synthetic_data, tmp_path,
                                            monkeypatch, capsys):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    line = _run('train', [SYNTHETIC_CONFIG, '--work-dir', str(tmp_path), '--cfg-options',
                          *tiny_run_options(tiny_synthetic_data, epochs=1)], monkeypatch, capsys)
    assert says in line


@pytest.mark.skipif(torch.cuda.is_available(), reason='asks for a GPU where there is none')
def test_gpu_asked_for_where_there_is_none(tiny_synthetic_data, tmp_path, monkeypatch, capsys):
    line = _run('train', [SYNTHETIC_CONFIG, '--work-dir', str(tmp_path), '--cfg-options',
                          *tiny_run_options(tiny_synthetic_data, epochs=1),
                          'optim_wrapper.type=AmpOptimWrapper'], monkeypatch, capsys)
    assert 'AmpOptimWrapper' in line and 'needs a GPU' in line and 'use --amp' in line
    line = _run('infer', [SYNTHETIC_CONFIG, 'x.pth', 'x.jpg', '--device', 'cuda:0'],
                monkeypatch, capsys)
    assert line.startswith('error: ') and names(line, '--device cuda:0', 'no GPU', 'use cpu')


def test_a_bug_exits_1_with_the_traceback_kept(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr('tempfile.tempdir', str(tmp_path))
    from mmengine.logging import MMLogger
    MMLogger.get_instance('no_run_yet')  # the current logger, without a run's log file

    def broken():
        raise ZeroDivisionError('division by zero')
    with pytest.raises(SystemExit) as e:
        with exit_on_user_error():
            broken()
    assert e.value.code == 1
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert line.startswith('error: internal error (ZeroDivisionError: division by zero): a bug')
    saved = line.split('the traceback is in ')[1].split(' (DINO_DEBUG=1')[0]
    assert saved.startswith(str(tmp_path)) and 'in broken' in open(saved).read()


# -- data at the edges --------------------------------------------------------------------

def _coco(root, images, anns, name='edge.json'):
    os.makedirs(root / 'annotations', exist_ok=True)
    path = root / 'annotations' / name
    path.write_text(json.dumps(dict(images=images, annotations=anns, categories=[
        dict(id=1, name='circle'), dict(id=2, name='square'), dict(id=3, name='triangle')])))
    return path


def _edge_options(root, ann):
    ann = str(ann)
    return [f'train_dataloader.dataset.data_root={root}/',
            f'train_dataloader.dataset.ann_file={ann}',
            'train_dataloader.dataset.data_prefix.img=img/',
            f'val_dataloader.dataset.data_root={root}/',
            f'val_dataloader.dataset.ann_file={ann}',
            'val_dataloader.dataset.data_prefix.img=img/',
            f'val_evaluator.ann_file={ann}', 'train_cfg.max_epochs=1',
            'train_cfg.val_begin=100', 'default_hooks.checkpoint.interval=1',
            *TINY_MODEL_OPTIONS]


def _jpeg(path, w, h):
    os.makedirs(osp.dirname(path), exist_ok=True)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (h // 16, w // 16, 3), dtype=np.uint8)).resize(
        (w, h)).save(path, quality=80)


def _box(i, image_id, bbox):
    return dict(id=i, image_id=image_id, category_id=1, bbox=bbox, area=100.0, iscrowd=0)


def test_annotation_file_without_images(tmp_path, monkeypatch, capsys):
    ann = _coco(tmp_path, [], [])
    line = _run('train', [SYNTHETIC_CONFIG, '--work-dir', str(tmp_path / 'w'), '--cfg-options',
                          *_edge_options(tmp_path, ann)], monkeypatch, capsys)
    assert line.startswith('error: ') and names(line, ann, 'no image to train on')


def test_zero_byte_image(tmp_path, monkeypatch, capsys):
    os.makedirs(tmp_path / 'img')
    (tmp_path / 'img' / 'zero.jpg').write_bytes(b'')
    ann = _coco(tmp_path, [dict(id=1, file_name='zero.jpg', width=64, height=64)],
                [_box(1, 1, [5, 5, 20, 20])])
    line = _run('train', [SYNTHETIC_CONFIG, '--work-dir', str(tmp_path / 'w'), '--cfg-options',
                          *_edge_options(tmp_path, ann), 'train_dataloader.num_workers=0'],
                monkeypatch, capsys)
    assert line.startswith('error: ') and names(line, f'{tmp_path}/img/zero.jpg', 'empty')


def test_boxes_given_as_strings(tmp_path, monkeypatch, capsys):
    _jpeg(str(tmp_path / 'img' / 'a.jpg'), 64, 64)
    ann = _coco(tmp_path, [dict(id=1, file_name='a.jpg', width=64, height=64)],
                [_box(1, 1, ['5', '5', '20', '20'])])
    line = _run('train', [SYNTHETIC_CONFIG, '--work-dir', str(tmp_path / 'w'), '--cfg-options',
                          *_edge_options(tmp_path, ann)], monkeypatch, capsys)
    assert f'{ann}: annotations[0] (id 1): "bbox" is' in line
    assert 'expected a list of 4 numbers [x, y, w, h]' in line


def test_huge_image_and_the_same_image_twice_train(tmp_path, one_torch_thread):
    """An image far larger than any training scale (resized like the others) and one
    image listed twice under two ids: both train."""
    _jpeg(str(tmp_path / 'img' / 'huge.jpg'), 6000, 4000)
    _jpeg(str(tmp_path / 'img' / 'small.jpg'), 96, 80)
    images = [dict(id=1, file_name='huge.jpg', width=6000, height=4000),
              dict(id=2, file_name='small.jpg', width=96, height=80),
              dict(id=3, file_name='small.jpg', width=96, height=80)]
    anns = [_box(1, 1, [500, 400, 2000, 1500]), _box(2, 2, [10, 10, 30, 30]),
            _box(3, 3, [40, 20, 30, 30])]
    ann = _coco(tmp_path, images, anns)
    work = tmp_path / 'w'
    load_tool('train').main([SYNTHETIC_CONFIG, '--work-dir', str(work), '--batch-size', '3',
                             '--cfg-options', *_edge_options(tmp_path, ann)])
    assert read_checkpoint(work / 'epoch_1.pth', map_location='cpu')['meta']['iter'] == 1
