"""Write a COCO 2017-layout dataset again in the two other layouts ``--data-root`` reads:
one folder per split (Roboflow's COCO export) and YOLO (Roboflow's YOLO export).

``python -m projects.dino_dinov2.datasets --layout folders|yolo`` uses it to give the
synthetic dataset in each layout; the tests use it to check that the three readings give
the same boxes. Images are hard-linked where the file system allows (else copied).
"""
from __future__ import annotations

import json
import os
import os.path as osp
import shutil
from typing import Dict

LAYOUTS = ('coco', 'folders', 'yolo')
FOLDER_NAMES = {'train': 'train', 'val': 'valid', 'test': 'test'}


def _place(src: str, dst: str) -> None:
    os.makedirs(osp.dirname(dst), exist_ok=True)
    if osp.exists(dst):
        return
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def _splits(coco_root: str) -> Dict[str, tuple]:
    found = {}
    for split in ('train', 'val', 'test'):
        ann = osp.join(coco_root, 'annotations', f'instances_{split}.json')
        if osp.isfile(ann):
            found[split] = (ann, osp.join(coco_root, split))
    return found


def write_folders(coco_root: str, out: str) -> str:
    """``out/{train,valid,test}/`` with the images and ``_annotations.coco.json``."""
    for split, (ann, img_dir) in _splits(coco_root).items():
        folder = osp.join(out, FOLDER_NAMES[split])
        with open(ann) as f:
            data = json.load(f)
        for img in data['images']:
            _place(osp.join(img_dir, img['file_name']), osp.join(folder, img['file_name']))
        with open(osp.join(folder, '_annotations.coco.json'), 'w') as f:
            json.dump(data, f)
    return out


def write_yolo(coco_root: str, out: str) -> str:
    """``out/data.yaml`` (Roboflow's ``train: ../train/images`` form) and
    ``out/{train,valid,test}/{images,labels}``; class ``i`` is the ``i``-th category by id."""
    names = None
    keys = {}
    for split, (ann, img_dir) in _splits(coco_root).items():
        with open(ann) as f:
            data = json.load(f)
        cats = sorted(data['categories'], key=lambda c: c['id'])
        names = names or [c['name'] for c in cats]
        index = {c['id']: i for i, c in enumerate(cats)}
        folder = osp.join(out, FOLDER_NAMES[split])
        by_image: Dict[int, list] = {}
        for a in data['annotations']:
            by_image.setdefault(a['image_id'], []).append(a)
        for img in data['images']:
            _place(osp.join(img_dir, img['file_name']),
                   osp.join(folder, 'images', img['file_name']))
            anns = by_image.get(img['id'], [])
            if not anns:
                continue  # no label file: an image without boxes
            w, h = float(img['width']), float(img['height'])
            lines = [f'{index[a["category_id"]]} {(a["bbox"][0] + a["bbox"][2] / 2) / w:.6f} '
                     f'{(a["bbox"][1] + a["bbox"][3] / 2) / h:.6f} {a["bbox"][2] / w:.6f} '
                     f'{a["bbox"][3] / h:.6f}' for a in anns]
            label = osp.join(folder, 'labels', osp.splitext(img['file_name'])[0] + '.txt')
            os.makedirs(osp.dirname(label), exist_ok=True)
            with open(label, 'w') as f:
                f.write('\n'.join(lines) + '\n')
        keys[split] = f'../{FOLDER_NAMES[split]}/images'
    with open(osp.join(out, 'data.yaml'), 'w') as f:
        for key, path in keys.items():
            f.write(f'{key}: {path}\n')
        f.write(f'\nnc: {len(names)}\nnames: {json.dumps(names)}\n')
    return osp.join(out, 'data.yaml')


def write_layout(coco_root: str, out: str, layout: str) -> str:
    if layout == 'folders':
        return write_folders(coco_root, out)
    if layout == 'yolo':
        return write_yolo(coco_root, out)
    raise ValueError(f'layout must be folders or yolo, got {layout}')


__all__ = ['LAYOUTS', 'write_folders', 'write_yolo', 'write_layout']
