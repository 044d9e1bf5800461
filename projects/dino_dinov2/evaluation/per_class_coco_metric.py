"""COCO box AP with a per-class table: name, AP, AP50 and the class's boxes.

A single mAP hides the class that fails, which on a user's own dataset is often the
point of evaluating. mmdet's ``CocoMetric(classwise=True)`` logs a per-class table but
returns only each class's AP, and without the number of boxes behind it (a class with 3
boxes in the validation set gives a noisy AP). :class:`PerClassCocoMetric` returns, for
every class, ``per_class/<name>_AP``, ``per_class/<name>_AP50`` and
``per_class/<name>_boxes`` next to CocoMetric's own keys, and logs them as one table.
The per-class figures come from a second pycocotools evaluation of the same detections
(``CocoMetric`` keeps its ``COCOeval`` to itself); it is used where ``--data-root`` is.
It also evaluates against a YOLO export: ``ann_file`` its ``data.yaml`` and ``yolo_split``
the split, the ground truth read in memory as the dataset reads it.
"""
from __future__ import annotations

import os.path as osp
import tempfile
from typing import Dict

import numpy as np
from mmdet.datasets.api_wrappers import COCOeval
from mmdet.evaluation.metrics import CocoMetric
from mmdet.registry import METRICS
from mmengine.logging import MMLogger


def _mean(precision: np.ndarray) -> float:
    valid = precision[precision > -1]
    return float(np.mean(valid)) if valid.size else float('nan')


@METRICS.register_module()
class PerClassCocoMetric(CocoMetric):
    """``CocoMetric`` (bbox) plus each class's AP, AP50 and boxes (see module doc)."""

    def __init__(self, ann_file=None, *args, yolo_split=None, **kwargs) -> None:
        from ..datasets.yolo import is_yolo_yaml
        if not is_yolo_yaml(ann_file):
            super().__init__(ann_file, *args, **kwargs)
            return
        from ..datasets.checked_coco import coco_api, read_annotations
        super().__init__(None, *args, **kwargs)
        data = read_annotations(ann_file, yolo_split, test_mode=True)
        data.pop('yolo_skipped', None)
        data.pop('yolo_examples', None)
        self._coco_api = coco_api(data)

    def compute_metrics(self, results: list) -> Dict[str, float]:
        metrics = super().compute_metrics(results)
        if self.format_only or 'bbox' not in self.metrics:
            return metrics
        _, preds = zip(*results)
        with tempfile.TemporaryDirectory() as tmp:
            files = self.results2json(preds, osp.join(tmp, 'results'))
            detections = self._coco_api.loadRes(files['bbox']) if preds else None
        if detections is None or not detections.anns:
            return metrics
        evaluator = COCOeval(self._coco_api, detections, 'bbox')
        evaluator.params.catIds = self.cat_ids
        evaluator.params.imgIds = self.img_ids
        evaluator.params.maxDets = list(self.proposal_nums)
        evaluator.params.iouThrs = self.iou_thrs
        evaluator.evaluate()
        evaluator.accumulate()
        precision = evaluator.eval['precision']  # (iou, recall, class, area, max dets)
        i50 = int(np.argmin(np.abs(np.asarray(self.iou_thrs) - 0.5)))
        rows = []
        for k, cat_id in enumerate(self.cat_ids):
            name = self._coco_api.load_cats(cat_id)[0]['name']
            boxes = len(self._coco_api.get_ann_ids(cat_ids=[cat_id], iscrowd=False))
            ap, ap50 = _mean(precision[:, :, k, 0, -1]), _mean(precision[i50, :, k, 0, -1])
            metrics[f'per_class/{name}_AP'] = round(ap, 4)
            metrics[f'per_class/{name}_AP50'] = round(ap50, 4)
            metrics[f'per_class/{name}_boxes'] = boxes
            rows.append((name, ap, ap50, boxes))
        MMLogger.get_current_instance().info('\n' + per_class_table(rows))
        return metrics


def per_class_table(rows) -> str:
    """Markdown table of (name, AP, AP50, boxes) rows; NaN (no box, no detection) as '-'."""
    def fmt(v):
        return '-' if v != v else f'{v:.3f}'
    width = max([5] + [len(r[0]) for r in rows])
    lines = [f'| {"class":<{width}} | AP    | AP50  | boxes |',
             f'| {"-" * width} | ----- | ----- | ----- |']
    lines += [f'| {n:<{width}} | {fmt(a):>5} | {fmt(a5):>5} | {b:>5} |' for n, a, a5, b in rows]
    return '\n'.join(lines)


def per_class_rows(metrics: dict):
    """The (name, AP, AP50, boxes) rows of a metrics dict (any key prefix), in order."""
    rows = {}
    for key, value in metrics.items():
        if 'per_class/' not in key:
            continue
        rest = key.rpartition('per_class/')[2]
        name, _, what = rest.rpartition('_')
        rows.setdefault(name, {})[what] = value
    return [(n, r.get('AP', float('nan')), r.get('AP50', float('nan')), int(r.get('boxes', 0)))
            for n, r in rows.items()]
