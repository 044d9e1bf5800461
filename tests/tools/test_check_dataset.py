"""tools/check_dataset.py finds each kind of problem in a dataset made with it."""
import json
import os.path as osp

import pytest

from config_runs import write_own_dataset
from helpers import load_tool


@pytest.fixture
def broken(tmp_path):
    """The own dataset (split folders) with one of each problem in its training file."""
    root = str(tmp_path / 'data')
    write_own_dataset(root, 'folders')
    ann = osp.join(root, 'train', '_annotations.coco.json')
    data = json.load(open(ann))
    first = data['images'][0]
    w = first['width']

    def box(bbox, iscrowd=0, image=first):
        data['annotations'].append(dict(id=900 + len(data['annotations']), image_id=image['id'],
                                        category_id=3, bbox=bbox, area=1.0, iscrowd=iscrowd))
    box([w + 10, 10, 20, 20])  # outside the image
    box([10, 10, 0, 15])  # degenerate
    box([w - 10, 10, 30, 20])  # partly outside: clipped
    box([5, 5, 40, 40], iscrowd=1)  # crowd
    data['images'].append(dict(id=777, file_name='missing.jpg', width=640, height=480))
    data['images'].append(dict(id=778, file_name='corrupt.jpg', width=640, height=480))
    open(osp.join(root, 'train', 'corrupt.jpg'), 'wb').write(b'\xff\xd8not a jpeg at all')
    data['images'].append(dict(first, id=779))  # the same image listed twice
    json.dump(data, open(ann, 'w'))
    return root


def test_every_problem_is_found(broken, tmp_path, capsys):
    check = load_tool('check_dataset')
    rc = check.main(['--data-root', broken, '--show', '3', '--out-dir', str(tmp_path / 'out')])
    out = capsys.readouterr().out
    assert rc == 1
    found = [line for line in out.splitlines() if line.startswith(('error:', 'warning:',
                                                                   'note:'))]
    text = '\n'.join(found)
    assert 'error: train: 2 images missing or unreadable' in text
    assert 'missing.jpg: image file not found' in text and 'corrupt.jpg: cannot decode' in text
    assert 'warning: train: 1 boxes dropped: outside the image' in text
    assert 'warning: train: 1 boxes dropped: zero or negative size' in text
    assert 'warning: train: 1 boxes partly outside the image, clipped' in text
    assert 'warning: train: 1 image files listed more than once' in text
    assert 'warning: train: categories without boxes: traffic light' in text
    # the empty one, the missing and the corrupt one, the second entry of the listed-twice one
    assert 'note: train: 4 images without boxes' in text
    assert 'note: train: 1 crowd boxes' in text
    assert '| red car       |' in out and 'image sizes (w x h): min' in out
    for split in ('train', 'val', 'test'):
        assert osp.getsize(tmp_path / 'out' / f'{split}_samples.png') > 1000


def test_duplicate_ids_and_a_clean_dataset(broken, tmp_path, capsys):
    check = load_tool('check_dataset')
    clean = str(tmp_path / 'clean')
    write_own_dataset(clean, 'coco2017')
    assert check.main(['--data-root', clean]) == 0
    assert '0 errors: the data can train' in capsys.readouterr().out
    ann = osp.join(broken, 'valid', '_annotations.coco.json')
    data = json.load(open(ann))
    data['annotations'][1]['id'] = data['annotations'][0]['id']
    json.dump(data, open(ann, 'w'))
    assert check.main([ann, osp.join(broken, 'valid')]) == 1
    assert 'duplicate id' in capsys.readouterr().out


def test_classes_differing_between_splits_is_an_error(tmp_path, capsys):
    root = str(tmp_path / 'data')
    write_own_dataset(root, 'folders')
    ann = osp.join(root, 'test', '_annotations.coco.json')
    data = json.load(open(ann))
    data['categories'] = data['categories'][:2]
    json.dump(data, open(ann, 'w'))
    assert load_tool('check_dataset').main(['--data-root', root, '--no-images']) == 1
    assert "error: test: the test file" in capsys.readouterr().out


@pytest.mark.parametrize('layout', ['coco2017', 'folders', 'yolo'])
def test_show_draws_samples_of_every_layout(layout, tmp_path, capsys):
    """--show reads each split as training does: a YOLO data.yaml too (it was read as JSON)."""
    from projects.dino_dinov2.datasets.layouts_out import write_yolo
    from projects.dino_dinov2.datasets.synthetic import generate_synthetic_coco
    root = str(tmp_path / 'data')
    if layout == 'yolo':  # the project's own generator's YOLO export
        generate_synthetic_coco(str(tmp_path / 'coco'), num_train=8, num_val=4)
        write_yolo(str(tmp_path / 'coco'), root)
    else:
        write_own_dataset(root, layout)
    out = str(tmp_path / 'show')
    code = load_tool('check_dataset').main(['--data-root', root, '--show', '4', '--out-dir', out])
    printed = capsys.readouterr().out
    assert code == 0, printed
    written = [line.split(' ', 1)[1] for line in printed.splitlines()
               if line.startswith('wrote ')]
    assert len(written) >= 2 and all(osp.getsize(p) > 1000 for p in written), printed
