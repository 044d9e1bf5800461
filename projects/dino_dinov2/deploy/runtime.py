"""An exported graph evaluated by mmengine's test loop (``tools/test.py --backend
onnxruntime|openvino --onnx model.onnx``, and the INT8 accuracy gate): the same dataset,
pipeline up to the decoded image, and COCO metric as the PyTorch model, so the AP is the
parity check.

The config's test pipeline keeps its loading and packing; its resize is dropped, because
the graph's input size and the sidecar's letterbox rule (:mod:`.letterbox`) decide it, as
for any caller of the graph. Boxes go back to the original image's pixels.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from mmengine.model import BaseModel
from mmengine.structures import InstanceData

from .backends import open_graph
from .letterbox import boxes_back, letterbox

_RESIZES = ('Resize', 'RandomResize', 'RandomChoiceResize', 'FixShapeResize')


def use_letterbox_pipeline(cfg) -> list:
    """Drop the resizes of the test and val pipelines (the letterbox replaces them);
    returns the dropped transform types."""
    dropped = []
    for key in ('test_dataloader', 'val_dataloader'):
        loader = cfg.get(key, None)
        if not loader:
            continue
        pipeline = loader.dataset.pipeline
        dropped += [t['type'] for t in pipeline if t['type'] in _RESIZES]
        loader.dataset.pipeline = [t for t in pipeline if t['type'] not in _RESIZES]
    return dropped


class GraphDetector(BaseModel):
    """``test_step`` of a detector, computed by a runtime (:mod:`.backends`) on the
    exported graph."""

    def __init__(self, onnx_path: str, info: dict, backend: str = 'onnxruntime',
                 precision: str = 'f32') -> None:
        super().__init__()
        self.session = open_graph(onnx_path, backend, precision)
        self.info = info
        shape = info['input']['shape']
        self.batch = shape[0]
        self.height, self.width = shape[2], shape[3]
        self.pad_value = info['preprocess']['pad_value']

    def _run(self, x: torch.Tensor):
        batch = x[None].numpy()
        if self.batch not in ('N', 1):
            batch = np.repeat(batch, self.batch, axis=0)
        boxes, scores, labels = self.session.run(batch)
        return boxes[0], scores[0], labels[0]

    def test_step(self, data: dict) -> list:
        samples = []
        for img, sample in zip(data['inputs'], data['data_samples']):
            rgb = img.flip(0).permute(1, 2, 0).contiguous().numpy()  # pipeline: BGR CHW
            x, scale = letterbox(rgb, self.height, self.width, self.pad_value)
            boxes, scores, labels = self._run(x)
            h, w = sample.metainfo['ori_shape'][:2]
            sample.pred_instances = InstanceData(
                bboxes=torch.from_numpy(boxes_back(boxes, scale, (h, w))),
                scores=torch.from_numpy(scores), labels=torch.from_numpy(labels))
            samples.append(sample)
        return samples

    val_step = test_step

    def forward(self, *args, **kwargs):  # pragma: no cover - only test_step is used
        raise NotImplementedError('GraphDetector only evaluates (test_step)')


def prepare_graph_test(cfg, onnx_path: str, info: dict, backend: str) -> str:
    """Point a test config at a graph: the letterbox replaces the resize; returns the line
    the log starts with."""
    use_letterbox_pipeline(cfg)
    h, w = info['input']['shape'][2:]
    return (f'backend: {backend} on {onnx_path} ({h}x{w} input, images letterboxed as '
            'its model.json says)')


def use_graph(runner, onnx_path: str, info: dict, backend: str,
              precision: str = 'f32') -> GraphDetector:
    """The built Runner's model replaced by the graph (the graph holds the weights)."""
    from ..upstream.runner import skip_checkpoint_load
    runner.model = GraphDetector(onnx_path, info, backend, precision)
    skip_checkpoint_load(runner)
    return runner.model


def evaluate_graph(config: str, onnx_path: str, info: dict, work_dir: str,
                   val: Optional[str] = None, val_images: Optional[int] = None,
                   backend: str = 'onnxruntime', cfg_options: Optional[dict] = None) -> dict:
    """COCO metrics of a graph on a validation set: ``val`` (a dataset root in any
    ``--data-root`` layout: its val split; or a folder holding one COCO file and its
    images) or the config's own validation set; the first ``val_images`` images when
    given."""
    from mmengine.runner import Runner

    from .. import cli
    import os.path as osp
    import time
    cfg = cli.load_config(config, cfg_options)
    cfg.work_dir = work_dir
    # names of its own: mmengine reuses the logger and the visualizer of an earlier object
    # of the same name (mmdet's configs name theirs 'visualizer'), whose folder this
    # temporary one would become for every later Runner of the process
    cfg.experiment_name = f'{osp.basename(work_dir)}_{time.time_ns()}'
    if cfg.get('visualizer'):
        cfg.visualizer.name = cfg.experiment_name
    cfg.log_level = 'WARNING'  # the gate prints its own lines
    cli.skip_backbone_download(cfg)
    if val is not None:
        cli.use_dataset(cfg, *_val_source(val), test=False)
    cfg.test_dataloader = cfg.val_dataloader
    cfg.test_evaluator = cfg.val_evaluator
    if val_images:
        _first_images(cfg, int(val_images), work_dir)
    cli.use_checked_loading(cfg)
    cli.check_data_paths(cfg, ['test_dataloader'])
    prepare_graph_test(cfg, onnx_path, info, backend)
    cfg.load_from = None
    runner = Runner.from_cfg(cfg)
    use_graph(runner, onnx_path, info, backend)
    try:
        return runner.test()
    finally:
        cli.release_dataloader_workers(runner)


def _first_images(cfg, n: int, work_dir: str) -> None:
    """Point the test dataloader and metric at a COCO file of the first ``n`` images of
    the validation file (and their boxes): the AP of those images, not of the whole file
    with the others' boxes counted as missed (mmengine's ``indices`` limits the data, not
    the COCO file the metric reads)."""
    import json
    import os
    import os.path as osp

    from ..datasets.checked_coco import read_annotations
    ds = cfg.test_dataloader.dataset
    while 'dataset' in ds:  # a wrapper (ClassBalancedDataset, ...)
        ds = ds.dataset
    ann = ds.ann_file if osp.isabs(ds.ann_file) else osp.join(ds.get('data_root', '') or '',
                                                              ds.ann_file)
    data = read_annotations(ann, ds.get('yolo_split', None), test_mode=True)
    images = data['images'][:n]
    ids = {img['id'] for img in images}
    subset = dict(images=images, categories=data['categories'],
                  annotations=[a for a in data.get('annotations', []) if a['image_id'] in ids])
    os.makedirs(work_dir, exist_ok=True)
    path = osp.abspath(osp.join(work_dir, f'val_first_{len(images)}.json'))
    with open(path, 'w') as f:
        json.dump(subset, f)
    prefix = (ds.get('data_prefix', None) or {}).get('img', '')
    ds.data_prefix = dict(img=osp.abspath(osp.join(ds.get('data_root', '') or '', prefix))
                          + osp.sep)
    ds.ann_file, ds.data_root = path, ''
    ds.pop('yolo_split', None)  # the subset is a COCO file
    evaluators = cfg.test_evaluator if isinstance(cfg.test_evaluator, list) \
        else [cfg.test_evaluator]
    for metric in evaluators:
        if isinstance(metric, dict) and 'ann_file' in metric:
            metric.ann_file = path
            metric.pop('yolo_split', None)


def _val_source(val: str):
    """(data_root, files) for :func:`cli.use_dataset` from ``--val``."""
    import glob
    import os.path as osp

    from ..datasets.errors import DatasetError
    from ..datasets.layout import ROBOFLOW_FILE, find_layout
    if not osp.exists(val):
        raise DatasetError(f'--val {val}: not found')
    try:
        find_layout(val)
        return val, None
    except DatasetError as layout_error:
        if not osp.isdir(val):
            raise
        named = osp.join(val, ROBOFLOW_FILE)
        found = [named] if osp.isfile(named) else sorted(glob.glob(osp.join(val, '*.json')))
        if len(found) != 1:
            raise DatasetError(f'--val {val}: needs annotations: a dataset root (COCO 2017, '
                               f'one folder per split, YOLO data.yaml) or a folder with one '
                               f'COCO file beside its images ({layout_error})') from None
        files = {'train': (found[0], val), 'val': (found[0], val)}
        return None, files
