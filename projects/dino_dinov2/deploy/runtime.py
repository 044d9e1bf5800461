"""An exported graph evaluated by mmengine's test loop (``tools/test.py --backend
onnxruntime --onnx model.onnx``): the same dataset, pipeline up to the decoded image, and
COCO metric as the PyTorch model, so the AP is the parity check.

The config's test pipeline keeps its loading and packing; its resize is dropped, because
the graph's input size and the sidecar's letterbox rule (:mod:`.letterbox`) decide it, as
for any caller of the graph. Boxes go back to the original image's pixels.
"""
from __future__ import annotations

import numpy as np
import torch
from mmengine.model import BaseModel
from mmengine.structures import InstanceData

from .letterbox import boxes_back, letterbox
from .onnx_export import onnx_session

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


class OnnxRuntimeDetector(BaseModel):
    """``test_step`` of a detector, computed by onnxruntime on the exported graph."""

    def __init__(self, onnx_path: str, info: dict) -> None:
        super().__init__()
        self.session = onnx_session(onnx_path)
        self.info = info
        shape = info['input']['shape']
        self.batch = shape[0]
        self.height, self.width = shape[2], shape[3]
        self.pad_value = info['preprocess']['pad_value']

    def _run(self, x: torch.Tensor):
        batch = x[None].numpy()
        if self.batch not in ('N', 1):
            batch = np.repeat(batch, self.batch, axis=0)
        boxes, scores, labels = self.session.run(None, {'images': batch})
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
        raise NotImplementedError('OnnxRuntimeDetector only evaluates (test_step)')
