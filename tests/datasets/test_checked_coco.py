"""Annotation files: missing / not JSON / wrong schema -> one-line error naming the file;
bad boxes dropped or clipped with counts in the log; images without boxes kept or
filtered; the data still trains."""
import copy
import json
import os.path as osp

import numpy as np
import pytest
from PIL import Image

from helpers import SYNTHETIC_CONFIG, captured_log, names
from projects.dino_dinov2.datasets import (AnnotationFileError, CheckedCocoDataset,
                                           DatasetError, ImageFileError)

CLASSES = ('circle', 'square', 'triangle')
W, H = 40, 30


def _ann(ann_id, image_id, bbox, category_id=1):
    return dict(id=ann_id, image_id=image_id, category_id=category_id, bbox=bbox,
                area=abs(bbox[2] * bbox[3]), iscrowd=0)


# image 1: good boxes and one per kind of fault; image 2: only bad boxes;
# image 3: no boxes; image 4: a good box of every class
BAD_BOXES = {
    'images': [dict(id=i, file_name=f'{i}.png', width=W, height=H) for i in (1, 2, 3, 4)],
    'categories': [dict(id=1, name='circle'), dict(id=2, name='square'),
                   dict(id=3, name='triangle'), dict(id=4, name='diamond')],
    'annotations': [
        _ann(1, 1, [2, 3, 10, 8]),                      # kept as is
        _ann(2, 1, [-5, 20, 15, 20], category_id=2),    # partly outside: clipped
        _ann(3, 1, [5, 5, 0, 7]),                       # zero width
        _ann(4, 1, [5, 5, 6, -3]),                      # negative height
        _ann(5, 1, [50, 5, 6, 6]),                      # right of the image
        _ann(6, 1, [5, 5, 6, 6], category_id=99),       # unknown category id
        _ann(7, 1, [float('nan'), 5, 6, 6]),            # NaN coordinate
        _ann(8, 1, [39.5, 5, 6, 6]),                    # 0.5 px wide once clipped
        _ann(9, 1, [5, 5, 6, 6], category_id=4),        # a category not among the classes
        _ann(10, 2, [5, 5, 0, 0]),
        _ann(11, 2, [-20, -20, 10, 10]),                # above-left of the image
        _ann(12, 77, [5, 5, 6, 6]),                     # unknown image id
        _ann(13, 4, [1, 1, 5, 5]), _ann(14, 4, [8, 8, 5, 5], category_id=2),
        _ann(15, 4, [20, 10, 8, 8], category_id=3),
    ],
}


def _write(root, coco, name='ann.json'):
    folder = root / 'images'
    folder.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    for img in coco.get('images', []) if isinstance(coco, dict) else []:
        if isinstance(img, dict) and 'file_name' in img and not (folder / img[
                'file_name']).exists():
            Image.fromarray(rng.integers(0, 255, (H, W, 3), dtype=np.uint8)).save(
                folder / img['file_name'])
    path = root / name
    path.write_text(json.dumps(coco) if not isinstance(coco, str) else coco)
    return path


def _dataset(root, ann='ann.json', pipeline=(), **kwargs):
    from mmengine.registry import init_default_scope
    init_default_scope('mmdet')  # the pipeline's transforms are mmdet's (and this project's)
    kwargs.setdefault('metainfo', dict(classes=CLASSES))
    return CheckedCocoDataset(data_root=str(root), ann_file=ann,
                              data_prefix=dict(img='images/'), pipeline=list(pipeline),
                              **kwargs)


# -- the annotation file ------------------------------------------------------------------

def test_missing_annotation_file(tmp_path):
    with pytest.raises(AnnotationFileError) as e:
        _dataset(tmp_path, ann='annotations/nope.json')
    assert names(str(e.value), 'not found', f'{tmp_path}/annotations/nope.json')


def test_missing_data_root(tmp_path):
    with pytest.raises(DatasetError) as e:
        _dataset(tmp_path / 'no_such_root')
    assert str(e.value).startswith(f'data root not found: {tmp_path}/no_such_root (set the '
                                   "dataset's data_root")


@pytest.mark.parametrize('text, problem', [
    ('{"images": [', 'not valid JSON (line 1, column 13: Expecting value)'),
    ('', 'not valid JSON (line 1, column 1: Expecting value)'),
    ('{"images": []]', "not valid JSON (line 1, column 14: Expecting ',' delimiter)"),
])
def test_not_json(tmp_path, text, problem):
    path = _write(tmp_path, text)
    with pytest.raises(AnnotationFileError) as e:
        _dataset(tmp_path)
    assert names(str(e.value), path, problem)


def test_binary_file(tmp_path):
    path = tmp_path / 'ann.json'
    path.write_bytes(b'\x89PNG\r\n\x1a\n\xff\xfe')
    with pytest.raises(AnnotationFileError, match=r'ann.json: not a JSON text file'):
        _dataset(tmp_path)


def _good():
    return copy.deepcopy(BAD_BOXES)


def _set(path, value):
    def change(coco):
        obj = coco
        for key in path[:-1]:
            obj = obj[key]
        if value is KeyError:
            del obj[path[-1]]
        else:
            obj[path[-1]] = value
        return coco
    return change


SCHEMA_FAULTS = {
    'top level list': (lambda c: [c], 'the top level is a JSON list, not an object'),
    'no images': (_set(['images'], KeyError), 'no "images" list'),
    'no annotations': (_set(['annotations'], KeyError), 'no "annotations" list'),
    'annotations object': (_set(['annotations'], {}),
                           '"annotations" is a JSON dict, not a list'),
    'image not object': (_set(['images', 1], 7), 'images[1] is a JSON int, not an object'),
    'image without file_name': (_set(['images', 0, 'file_name'], KeyError),
                                'images[0] (id 1) has no "file_name"'),
    'image width 0': (_set(['images', 2, 'width'], 0),
                      'images[2] (id 3): "width" is 0, expected a positive number'),
    'category id string': (_set(['categories', 0, 'id'], '1'),
                           "categories[0] (id '1'): \"id\" is '1', expected an integer"),
    'bbox of 3': (_set(['annotations', 0, 'bbox'], [1, 2, 3]),
                  'annotations[0] (id 1): "bbox" is [1, 2, 3], expected a list of 4 numbers '
                  '[x, y, w, h]'),
    'bbox string': (_set(['annotations', 2, 'bbox'], '1 2 3 4'),
                    'annotations[2] (id 3): "bbox" is \'1 2 3 4\', expected a list of 4 '
                    'numbers [x, y, w, h]'),
    'no category_id': (_set(['annotations', 4, 'category_id'], KeyError),
                       'annotations[4] (id 5) has no "category_id"'),
    'duplicate annotation id': (_set(['annotations', 1, 'id'], 1),
                                'annotations[1] (id 1): duplicate id'),
    'duplicate image id': (_set(['images', 3, 'id'], 1), 'images[3] (id 1): duplicate id'),
}


@pytest.mark.parametrize('fault', sorted(SCHEMA_FAULTS))
def test_wrong_schema_names_file_and_problem(tmp_path, fault):
    change, problem = SCHEMA_FAULTS[fault]
    path = _write(tmp_path, change(_good()))
    with pytest.raises(AnnotationFileError) as e:
        _dataset(tmp_path)
    msg = str(e.value)
    assert msg.startswith(f'{path}: {problem} (COCO format: '), msg
    assert '\n' not in msg


def test_evaluation_needs_area_and_iscrowd(tmp_path):
    """pycocotools' evaluation reads both; training does not: only test mode requires them."""
    coco = _good()
    del coco['annotations'][3]['area']
    path = _write(tmp_path, coco)
    with pytest.raises(AnnotationFileError, match=r'annotations\[3\] \(id 4\) has no "area"'):
        _dataset(tmp_path, test_mode=True)
    assert len(_dataset(tmp_path)) == 4
    del coco['annotations']
    _write(tmp_path, coco)  # an image-info file (COCO test-dev) is fine for testing
    assert len(_dataset(tmp_path, test_mode=True)) == 4
    assert path.exists()


def test_classes_the_file_does_not_define(tmp_path):
    path = _write(tmp_path, _good())
    with pytest.raises(AnnotationFileError) as e:
        _dataset(tmp_path, metainfo=dict(classes=('circle', 'Square')))
    assert str(e.value).startswith(f"{path}: the dataset's classes ['Square'] are not "
                                   "categories of this file (it has ['circle', 'square'")


# -- boxes --------------------------------------------------------------------------------

def test_bad_boxes_dropped_or_clipped_and_counted(tmp_path):
    path = _write(tmp_path, BAD_BOXES)
    with captured_log() as log:
        ds = _dataset(tmp_path, filter_cfg=dict(filter_empty_gt=False))
    r = ds.report
    assert (r['kept'], r['clipped to the image']) == (5, 1)
    assert {k: r[k] for k in ('zero or negative size', 'outside the image',
                              'unknown category id', 'non-finite coordinates',
                              'under 1 pixel after clipping', 'unknown image id',
                              'category not among the classes')} == {
        'zero or negative size': 3, 'outside the image': 2, 'unknown category id': 1,
        'non-finite coordinates': 1, 'under 1 pixel after clipping': 1,
        'unknown image id': 1, 'category not among the classes': 1}
    assert len(ds) == 4  # images without boxes kept
    by_id = {ds.get_data_info(i)['img_id']: ds.get_data_info(i)['instances']
             for i in range(len(ds))}
    assert [b['bbox'] for b in by_id[1]] == [[2.0, 3.0, 12.0, 11.0], [0.0, 20.0, 10.0, 30.0]]
    assert [b['bbox_label'] for b in by_id[1]] == [0, 1]
    assert by_id[2] == [] and by_id[3] == []
    assert [b['bbox_label'] for b in by_id[4]] == [0, 1, 2]
    line = [m for m in log if m.startswith('CheckedCocoDataset')]
    assert line == [
        f'CheckedCocoDataset {path}: 4 images, 5 boxes kept; dropped 9 boxes (1 non-finite '
        'coordinates, 3 zero or negative size, 1 unknown category id, 2 outside the image, '
        '1 under 1 pixel after clipping, 1 unknown image id); clipped 1 boxes to the image; '
        'skipped 1 boxes of categories not among the classes; 2 images without boxes (kept)']


def test_images_without_boxes_filtered_per_filter_cfg(tmp_path):
    path = _write(tmp_path, BAD_BOXES)
    with captured_log() as log:
        ds = _dataset(tmp_path, filter_cfg=dict(filter_empty_gt=True))
    # image 3 has no annotation; image 2 only bad ones (mmdet's own filter keeps it)
    assert sorted(ds.get_data_info(i)['img_id'] for i in range(len(ds))) == [1, 4]
    assert any(m.startswith(f'CheckedCocoDataset {path}') and m.endswith(
        '2 images without boxes (filtered: filter_cfg.filter_empty_gt; 2 images filtered '
        'in all)') for m in log)
    # evaluation never filters
    assert len(_dataset(tmp_path, filter_cfg=dict(filter_empty_gt=True), test_mode=True)) == 4


def test_clean_file_logs_info_only(tmp_path):
    coco = _good()
    coco['annotations'] = coco['annotations'][-3:]
    path = _write(tmp_path, coco)
    with captured_log() as log:
        ds = _dataset(tmp_path)
    assert ds.report['kept'] == 3
    assert f'CheckedCocoDataset {path}: 4 images, 3 boxes kept; 3 images without boxes ' \
           '(kept)' in log


def _synthetic_pipeline(test=False):
    from mmengine.config import Config
    cfg = Config.fromfile(SYNTHETIC_CONFIG)
    return (cfg.test_pipeline if test else cfg.train_pipeline)


def test_bad_boxes_still_train(tmp_path):
    """The repaired data goes through the real pipeline and a training step."""
    import torch
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    from mmengine.config import Config
    from mmengine.dataset import pseudo_collate
    from mmengine.optim import build_optim_wrapper

    register_all_modules()
    _write(tmp_path, BAD_BOXES)
    ds = _dataset(tmp_path, pipeline=_synthetic_pipeline())
    batch = pseudo_collate([ds[i] for i in range(len(ds))])
    boxes = [s.gt_instances.bboxes.tensor for s in batch['data_samples']]
    assert sum(len(b) for b in boxes) == 5
    for b in boxes:  # inside the (resized) image
        assert (b >= 0).all() and (b[:, 2:] <= 128).all()

    cfg = Config.fromfile(SYNTHETIC_CONFIG)
    cfg.model.backbone.model_kwargs.depth = 1
    cfg.model.encoder.num_layers = cfg.model.decoder.num_layers = 1
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    log_vars = model.train_step(batch, wrapper)
    assert torch.isfinite(log_vars['loss'])


# -- images the pipeline skips ------------------------------------------------------------

def test_train_set_skips_unreadable_image_with_warning(tmp_path):
    coco = _good()
    _write(tmp_path, coco)
    (tmp_path / 'images' / '4.png').write_bytes(b'broken')
    pipeline = [dict(type='CheckedLoadImageFromFile', skip_bad=True)]
    ds = _dataset(tmp_path, pipeline=pipeline)
    index = [ds.get_data_info(i)['img_id'] for i in range(len(ds))].index(4)
    with captured_log() as log:
        out = ds[index]  # another image instead (mmengine's refetch)
    assert out['img_path'] != str(tmp_path / 'images' / '4.png')
    assert f'skipping image {tmp_path}/images/4.png: cannot decode the image (corrupt, ' \
           'truncated or not an image) (skip_bad=True)' in log

    ds = _dataset(tmp_path, pipeline=[dict(type='CheckedLoadImageFromFile')])
    with pytest.raises(ImageFileError, match=r'images/4.png: cannot decode the image'):
        ds[index]


def test_test_set_cannot_skip_images(tmp_path):
    _write(tmp_path, _good())
    (tmp_path / 'images' / '2.png').unlink()
    ds = _dataset(tmp_path, test_mode=True,
                  pipeline=[dict(type='CheckedLoadImageFromFile', skip_bad=True)])
    index = [ds.get_data_info(i)['img_id'] for i in range(len(ds))].index(2)
    with pytest.raises(ImageFileError) as e:
        ds[index]
    assert names(str(e.value), f'{tmp_path}/images/2.png', 'skipped',
                 osp.join(str(tmp_path), 'ann.json'), 'fix the image or remove it')
