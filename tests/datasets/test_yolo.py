"""YOLO exports (Roboflow's and Ultralytics' data.yaml layouts) read into COCO form."""
import pytest
from PIL import Image

from projects.dino_dinov2.datasets.errors import DatasetError
from projects.dino_dinov2.datasets.yolo import label_path, read_data_yaml, read_yolo_split

NAMES = ['cat', 'dog', 'bird']
# pixel boxes [x, y, w, h] and class index, on a 64 x 48 image
BOXES = [([8, 4, 16, 20], 0), ([30, 10, 32, 36], 2)]


def _image(path, size=(64, 48)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new('RGB', size, (90, 120, 150)).save(path)


def _yolo_line(box, c, size=(64, 48)):
    (x, y, w, h), (W, H) = box, size
    return f'{c} {(x + w / 2) / W} {(y + h / 2) / H} {w / W} {h / H}'


def _roboflow(root):
    """Roboflow's export: data.yaml with train: ../train/images, split/images+labels."""
    for split in ('train', 'valid'):
        _image(root / split / 'images' / 'a.jpg')
        _image(root / split / 'images' / 'b.png')  # no label file: no boxes
        (root / split / 'labels').mkdir(parents=True)
        (root / split / 'labels' / 'a.txt').write_text(
            '\n'.join(_yolo_line(b, c) for b, c in BOXES) + '\n')
    (root / 'data.yaml').write_text(
        'train: ../train/images\nval: ../valid/images\n\nnc: 3\nnames: [cat, dog, bird]\n')
    return root / 'data.yaml'


def test_roboflow_yaml_resolves_and_boxes_equal_the_coco_pixels(tmp_path):
    names, splits = read_data_yaml(str(_roboflow(tmp_path)))
    assert names == NAMES
    assert splits == {'train': [str(tmp_path / 'train' / 'images')],
                      'val': [str(tmp_path / 'valid' / 'images')]}
    coco, skipped = read_yolo_split(splits['train'], names)
    assert not skipped
    assert [c['name'] for c in coco['categories']] == NAMES
    assert [(im['width'], im['height']) for im in coco['images']] == [(64, 48), (64, 48)]
    a = next(im['id'] for im in coco['images'] if im['file_name'].endswith('a.jpg'))
    got = [(ann['bbox'], ann['category_id']) for ann in coco['annotations']]
    assert all(ann['image_id'] == a for ann in coco['annotations'])
    assert [c for _, c in got] == [c + 1 for _, c in BOXES]
    for (bbox, _), (expected, _) in zip(got, BOXES):
        assert bbox == pytest.approx(expected, abs=1e-9)


def test_ultralytics_path_key_and_names_map(tmp_path):
    root = tmp_path / 'coco8'
    _image(root / 'images' / 'train' / 'x.jpg')
    (root / 'labels' / 'train').mkdir(parents=True)
    (root / 'labels' / 'train' / 'x.txt').write_text(_yolo_line(*BOXES[0]) + '\n')
    _image(root / 'images' / 'val' / 'y.jpg')
    yaml_path = tmp_path / 'cfg' / 'coco8.yaml'
    yaml_path.parent.mkdir()
    yaml_path.write_text('path: ../coco8\ntrain: images/train\nval: images/val\n'
                         'names:\n  0: cat\n  1: dog\n  2: bird\n')
    names, splits = read_data_yaml(str(yaml_path))
    assert names == NAMES and splits['val'] == [str(root / 'images' / 'val')]
    assert label_path(str(root / 'images' / 'train' / 'x.jpg')) == \
        str(root / 'labels' / 'train' / 'x.txt')
    coco, _ = read_yolo_split(splits['train'], names)
    assert len(coco['annotations']) == 1
    assert coco['annotations'][0]['bbox'] == pytest.approx(BOXES[0][0])


@pytest.mark.parametrize('line, message', [
    ('0 0.5 0.5 0.2', '5 numbers expected: class cx cy w h, got 4'),
    ('3 0.5 0.5 0.2 0.2', 'class index not in names: 3 (names has 3)'),
    ('1 0.5 1.5 0.2 0.2', 'values outside 0..1'),
    ('1 0.5 0.5 0 0.2', 'empty box'),
    ('x 0.5 0.5 0.2 0.2', 'not a number'),
])
def test_bad_lines_name_file_and_line_or_are_counted(tmp_path, line, message):
    _image(tmp_path / 'images' / 'train' / 'a.jpg')
    labels = tmp_path / 'labels' / 'train' / 'a.txt'
    labels.parent.mkdir(parents=True)
    labels.write_text(_yolo_line(*BOXES[0]) + '\n' + line + '\n')
    with pytest.raises(DatasetError) as e:
        read_yolo_split([str(tmp_path / 'images' / 'train')], NAMES)
    assert str(e.value).startswith(f'{labels}:2: {message}')
    coco, skipped = read_yolo_split([str(tmp_path / 'images' / 'train')], NAMES, strict=False)
    assert len(coco['annotations']) == 1 and sum(skipped.values()) == 1


def test_bad_yaml(tmp_path):
    path = tmp_path / 'data.yaml'
    path.write_text('train: images\nnames: [a, b]\nnc: 3\n')
    with pytest.raises(DatasetError, match='nc: 3 but 2 names'):
        read_data_yaml(str(path))
    path.write_text('train: nowhere\nnames: [a]\n')
    with pytest.raises(DatasetError, match='train: nowhere is not a folder'):
        read_data_yaml(str(path))
    path.write_text('train: .\n')
    with pytest.raises(DatasetError, match='no class names'):
        read_data_yaml(str(path))
