"""--data-root: the two layouts users bring, their classes, and clear errors otherwise."""
import json
import os
import os.path as osp

import pytest

from config_runs import OWN_CLASSES, write_own_dataset
from projects.dino_dinov2.datasets import DatasetError, find_layout, summarize_split
from projects.dino_dinov2.datasets.coco_summary import compare_classes


@pytest.fixture(scope='module')
def own(tmp_path_factory):
    roots = {}
    for layout in ('coco2017', 'folders'):
        roots[layout] = str(tmp_path_factory.mktemp(layout))
        write_own_dataset(roots[layout], layout)
    return roots


def test_coco2017_layout(own):
    layout = find_layout(own['coco2017'])
    assert layout.kind == 'COCO 2017 layout' and sorted(layout.splits) == ['train', 'val']
    train = layout.splits['train']
    assert train.ann_file.endswith('annotations/instances_train2017.json')
    assert train.img_dir.endswith('train2017')


def test_split_folder_layout(own):
    layout = find_layout(own['folders'])
    assert layout.kind == 'one folder per split'
    assert sorted(layout.splits) == ['test', 'train', 'val']
    assert layout.splits['val'].img_dir.endswith('valid')
    assert layout.splits['test'].ann_file.endswith('test/_annotations.coco.json')


def test_classes_come_from_the_training_file_in_id_order(own):
    layout = find_layout(own['folders'])
    s = summarize_split('train', layout.splits['train'].ann_file, layout.splits['train'].img_dir)
    assert s.classes == OWN_CLASSES and s.cat_ids == (3, 17, 42)
    assert s.images == 6 and s.trainable_images == 5  # one image without boxes
    assert s.empty_classes == ['traffic light']


def test_explicit_files_replace_or_make_the_layout(own, tmp_path):
    root = own['folders']
    files = {'train': (f'{root}/train/_annotations.coco.json', f'{root}/train'),
             'val': (f'{root}/test/_annotations.coco.json', f'{root}/test')}
    layout = find_layout(None, files)
    assert layout.kind == 'files given' and layout.splits['val'].img_dir.endswith('test')
    with pytest.raises(DatasetError, match='--val-ann and --val-img go together'):
        find_layout(None, dict(files, val=(files['val'][0], None)))


@pytest.mark.parametrize('change, message', [
    (lambda r: os.rename(f'{r}/valid', f'{r}/validation'), 'no val split found'),
    (lambda r: [os.rename(f'{r}/train/_annotations.coco.json', f'{r}/train/a.json'),
                open(f'{r}/train/b.json', 'w').write('{}')], 'several COCO files'),
    (lambda r: os.remove(f'{r}/train/_annotations.coco.json'), 'no COCO annotation file'),
])
def test_layout_errors_say_what_was_looked_for(own, tmp_path, change, message):
    import shutil
    root = str(tmp_path / 'data')
    shutil.copytree(own['folders'], root)
    change(root)
    with pytest.raises(DatasetError, match=message):
        find_layout(root)


def test_missing_root_and_unknown_layout(tmp_path):
    with pytest.raises(DatasetError, match='--data-root: folder not found'):
        find_layout(str(tmp_path / 'nope'))
    with pytest.raises(DatasetError, match='no train split found .*annotations/instances_'):
        find_layout(str(tmp_path))


def test_splits_that_name_other_classes(own, tmp_path):
    root = own['folders']
    train = summarize_split('train', f'{root}/train/_annotations.coco.json', f'{root}/train')
    data = json.load(open(f'{root}/valid/_annotations.coco.json'))
    data['categories'][1]['name'] = 'yield sign'
    path = tmp_path / 'val.json'
    path.write_text(json.dumps(data))
    val = summarize_split('val', str(path), f'{root}/valid')
    problem = compare_classes(train, val)
    assert "missing there: ['stop sign']" in problem and "only there: ['yield sign']" in problem


def test_duplicate_category_names(tmp_path):
    path = tmp_path / 'a.json'
    path.write_text(json.dumps(dict(images=[], annotations=[], categories=[
        dict(id=1, name='cat'), dict(id=5, name='cat')])))
    with pytest.raises(DatasetError, match="'cat' is used by ids 1 and 5"):
        summarize_split('train', str(path), str(tmp_path))
    assert osp.isfile(path)
