import json
import os.path as osp

import numpy as np
from PIL import Image
from pycocotools.coco import COCO

from projects.dino_dinov2.datasets import generate_synthetic_coco
from projects.dino_dinov2.datasets.synthetic import CLASSES


def test_coco_format_exact_boxes_and_determinism(tmp_path):
    a = generate_synthetic_coco(str(tmp_path / 'a'), num_train=12, num_val=4, seed=3,
                                progress=False)
    b = generate_synthetic_coco(str(tmp_path / 'b'), num_train=12, num_val=4, seed=3,
                                progress=False)
    assert json.load(open(a['train'])) == {**json.load(open(b['train'])),
                                           'info': json.load(open(a['train']))['info']}
    coco = COCO(a['train'])
    assert [c['name'] for c in coco.loadCats(coco.getCatIds())] == [
        'circle', 'square', 'triangle']
    per_image = [len(coco.getAnnIds(imgIds=i)) for i in coco.getImgIds()]
    assert max(per_image) > 1 and min(per_image) >= 1
    sizes = set()
    for ann in coco.loadAnns(coco.getAnnIds()):
        img = coco.loadImgs(ann['image_id'])[0]
        pixels = np.asarray(Image.open(osp.join(tmp_path, 'a', 'train', img['file_name'])))
        x, y, w, h = ann['bbox']
        sizes.add(w)
        colour = np.array(CLASSES[ann['category_id'] - 1][1])
        mask = (np.abs(pixels.astype(int) - colour).sum(-1) == 0)
        crop = mask[y:y + h, x:x + w]
        # the shape touches all four sides of its box (exact box), and nothing of its
        # colour lies just outside it unless another object of that class is there
        assert crop[0].any() and crop[-1].any() and crop[:, 0].any() and crop[:, -1].any()
    assert len(sizes) > 3  # varied sizes


def test_other_seed_differs(tmp_path):
    a = generate_synthetic_coco(str(tmp_path / 'a'), 4, 2, seed=0, progress=False)
    b = generate_synthetic_coco(str(tmp_path / 'b'), 4, 2, seed=1, progress=False)
    assert json.load(open(a['train']))['annotations'] != json.load(
        open(b['train']))['annotations']
