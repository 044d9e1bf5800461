"""Inference demo: a trained checkpoint's detections as JSON and as drawn images.

mmdet's own pieces do the work: ``init_detector`` builds the model from the config and
loads the checkpoint (class names from its ``dataset_meta``), ``inference_detector`` runs
the config's test pipeline, and ``DetLocalVisualizer`` draws the boxes. What this adds:
pretrained-backbone downloads turned off (the checkpoint holds every weight), one JSON
with boxes in pixels (x0, y0, x1, y1), scores and label names, and a file name per image.
"""
from __future__ import annotations

import json
import os
import os.path as osp
import uuid
from typing import Dict, List, Optional, Sequence

from .letterbox import ImageError, ImageNotFoundError, read_image

IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.tif', '.tiff', '.webp')


def expand_images(paths: Sequence[str]) -> List[str]:
    """Image files of ``paths``; a folder stands for its image files (sorted)."""
    out: List[str] = []
    for path in paths:
        if osp.isdir(path):
            found = sorted(osp.join(path, f) for f in os.listdir(path)
                           if f.lower().endswith(IMAGE_EXTENSIONS))
            if not found:
                raise ImageNotFoundError(f'{path}: no image files ({", ".join(IMAGE_EXTENSIONS)})')
            out += found
        elif osp.isfile(path):
            out.append(path)
        else:
            raise ImageNotFoundError(f'image not found: {path}')
    return out


def load_detector(config: str, checkpoint: str, device: Optional[str] = None,
                  cfg_options: Optional[dict] = None):
    """mmdet's ``init_detector`` on a config file, pretrained backbone weights off."""
    import torch

    import projects.dino_dinov2  # noqa: F401  (registers the modules)
    from mmdet.apis import init_detector

    from ..checkpoint import check_checkpoint_file, install_checkpoint_loader
    from ..cli.config_setup import load_config, skip_backbone_download
    check_checkpoint_file(checkpoint)  # missing, a folder, empty or truncated: one line
    cfg = load_config(config, cfg_options)
    skip_backbone_download(cfg)
    device = device or ('cuda:0' if torch.cuda.is_available() else 'cpu')
    install_checkpoint_loader()  # weights_only=True with mmengine's classes allowed
    return init_detector(cfg, checkpoint, device=device)


def class_names(model) -> Sequence[str]:
    meta = getattr(model, 'dataset_meta', None) or {}
    return tuple(meta.get('classes', ()))


def detections(sample, classes: Sequence[str], score_thr: float = 0.0) -> List[dict]:
    """Boxes of a DetDataSample with score >= ``score_thr``, highest score first.

    Each: ``bbox`` [x0, y0, x1, y1] in pixels of the original image, ``score``,
    ``label`` (class index) and ``label_name``.
    """
    pred = sample.pred_instances
    boxes = pred.bboxes.detach().float().cpu().numpy()
    scores = pred.scores.detach().float().cpu().numpy()
    labels = pred.labels.detach().cpu().numpy()
    out = []
    for i in scores.argsort()[::-1]:
        if scores[i] < score_thr:
            continue
        label = int(labels[i])
        out.append(dict(bbox=[round(float(v), 2) for v in boxes[i]],
                        score=round(float(scores[i]), 4), label=label,
                        label_name=classes[label] if label < len(classes) else str(label)))
    return out


def make_visualizer(model):
    """A fresh DetLocalVisualizer (unique name: mmengine keeps one instance per name)."""
    from mmdet.registry import VISUALIZERS
    vis = VISUALIZERS.build(dict(type='DetLocalVisualizer',
                                 name=f'infer_{uuid.uuid4().hex[:8]}'))
    vis.dataset_meta = getattr(model, 'dataset_meta', None) or dict(
        classes=tuple(getattr(model, 'classes', ())))
    return vis


def _graph_sample(detector, path: str):
    """A ``deploy.Detector``'s detections as the DetDataSample the rest expects."""
    import torch
    from mmdet.structures import DetDataSample
    from mmengine.structures import InstanceData
    result = detector.predict(path)
    sample = DetDataSample(metainfo=dict(ori_shape=result.image_size))
    sample.pred_instances = InstanceData(bboxes=torch.from_numpy(result.boxes),
                                         scores=torch.from_numpy(result.scores),
                                         labels=torch.from_numpy(result.labels))
    return sample


def _out_names(images: Sequence[str]) -> List[str]:
    """Output file names: the image's own, with a number where two share one."""
    names, seen = [], {}
    for path in images:
        base = osp.basename(path)
        if base in seen:
            seen[base] += 1
            stem, ext = osp.splitext(base)
            base = f'{stem}_{seen[base]}{ext}'
        else:
            seen[base] = 0
        names.append(base)
    return names


def run_inference(config: str, checkpoint: str, images: Sequence[str], out_dir: str,
                  score_thr: float = 0.3, device: Optional[str] = None,
                  cfg_options: Optional[dict] = None, draw: bool = True,
                  model=None) -> Dict:
    """Detect on ``images``; write ``out_dir/predictions.json`` and, with ``draw``,
    ``out_dir/<image name>`` with the boxes drawn. Returns the JSON content.

    A file that cannot be read as an image is skipped, the rest detected: its path and
    why are in the JSON's ``skipped`` list. One image that cannot be read, or none that
    can, is an :class:`ImageError` (one line, nothing written).

    ``model``: a detector :func:`load_detector` already built from ``config`` and
    ``checkpoint`` (they are then only recorded in the JSON).
    """
    import mmcv
    from mmdet.apis import inference_detector

    images = expand_images(images)
    if model is None:
        model = load_detector(config, checkpoint, device, cfg_options)
    skipped = []
    for path in images:
        try:
            read_image(path)
        except ImageError as e:
            if len(images) == 1:
                raise
            skipped.append(dict(image=path, error=str(e)))
    if len(skipped) == len(images):
        raise ImageError(f'none of the {len(images)} images can be read (the first: '
                         f'{skipped[0]["error"]})')
    bad = {s['image'] for s in skipped}
    from .predictor import Detector
    graph = isinstance(model, Detector) and model.backend != 'pytorch'  # an exported graph
    classes = model.classes if graph else class_names(model)
    vis = make_visualizer(model) if draw else None
    os.makedirs(out_dir, exist_ok=True)
    entries = []
    for path, name in zip(images, _out_names(images)):
        if path in bad:
            continue
        sample = _graph_sample(model, path) if graph else inference_detector(model, path)
        h, w = sample.metainfo['ori_shape'][:2]
        entry = dict(image=path, height=int(h), width=int(w),
                     detections=detections(sample, classes, score_thr))
        if vis is not None:
            img = mmcv.imread(path, channel_order='rgb')
            entry['vis'] = osp.join(out_dir, name)
            vis.add_datasample(name, img, data_sample=sample, draw_gt=False, show=False,
                               pred_score_thr=score_thr, out_file=entry['vis'])
        entries.append(entry)
    result = dict(config=config, checkpoint=checkpoint, score_thr=score_thr,
                  classes=list(classes), images=entries, skipped=skipped)
    with open(osp.join(out_dir, 'predictions.json'), 'w') as f:
        json.dump(result, f, indent=1)
    return result


__all__ = ['expand_images', 'load_detector', 'class_names', 'detections',
           'make_visualizer', 'run_inference']
