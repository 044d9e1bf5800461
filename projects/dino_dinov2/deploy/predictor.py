"""A detector for scripts and notebooks, from a checkpoint or from an exported graph.

    from projects.dino_dinov2.deploy import Detector
    det = Detector.from_checkpoint('configs/dino_dinov2_b_12ep.py', 'iter_90000.pth')
    # or: det = Detector.from_onnx('model.onnx')   (model.json beside it)
    # or: det = Detector.from_openvino('model.onnx')   (the same graph in OpenVINO)
    result = det.predict('photo.jpg', score_thr=0.3)   # path, RGB array or PIL image
    for box, score, name in zip(result.boxes, result.scores, result.class_names):
        print(name, round(score, 2), box)

Both return :class:`Detections` in the pixels of the image given. ``from_checkpoint``
runs the config's own test pipeline (any image size, the model's masks);
``from_onnx`` / ``from_openvino`` letterbox the image to the graph's size as its sidecar
says (float32 or the INT8 graph of ``tools/export.py --int8``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Sequence

import numpy as np

from .letterbox import boxes_back, letterbox, read_image


@dataclass
class Detections:
    """Boxes (n, 4) x1 y1 x2 y2 in image pixels, scores (n,), labels (n,), highest score
    first; ``class_names[i]`` names ``labels[i]``."""
    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    classes: Sequence[str] = field(default_factory=tuple)
    image_size: tuple = (0, 0)

    @property
    def class_names(self) -> List[str]:
        return [self.classes[i] if i < len(self.classes) else str(i) for i in self.labels]

    def __len__(self) -> int:
        return len(self.scores)

    def to_supervision(self):
        """``supervision.Detections`` (``pip install supervision``)."""
        try:
            import supervision as sv
        except ImportError:
            from .onnx_export import ExportError
            raise ExportError('to_supervision() needs the supervision package: '
                              'pip install supervision') from None
        return sv.Detections(xyxy=self.boxes.astype(np.float32),
                             confidence=self.scores.astype(np.float32),
                             class_id=self.labels.astype(int),
                             data={'class_name': np.array(self.class_names)})


def _keep(boxes, scores, labels, score_thr: float, classes, image_hw) -> Detections:
    order = np.argsort(-scores, kind='stable')
    boxes, scores, labels = boxes[order], scores[order], labels[order]
    keep = scores >= score_thr
    return Detections(boxes[keep], scores[keep], labels[keep].astype(np.int64),
                      tuple(classes), tuple(image_hw))


class Detector:
    """Use :meth:`from_checkpoint`, :meth:`from_onnx` or :meth:`from_openvino`."""

    def __init__(self, backend: str, classes: Sequence[str]) -> None:
        self.backend = backend
        self.classes = tuple(classes)

    @classmethod
    def from_checkpoint(cls, config: str, checkpoint: str, device: Optional[str] = None,
                        cfg_options: Optional[dict] = None) -> 'Detector':
        from .inference import class_names, load_detector
        model = load_detector(config, checkpoint, device, cfg_options)
        det = cls('pytorch', class_names(model))
        det.model = model
        return det

    @classmethod
    def from_onnx(cls, path: str, providers: Optional[Sequence[str]] = None,
                  threads: Optional[int] = None) -> 'Detector':
        """The graph in onnxruntime (``providers``: default CUDA where installed, CPU)."""
        from .backends import open_graph
        return cls._graph(path, lambda: open_graph(path, 'onnxruntime', providers=providers,
                                                   threads=threads))

    @classmethod
    def from_openvino(cls, path: str, precision: str = 'f32',
                      threads: Optional[int] = None) -> 'Detector':
        """The graph in OpenVINO's CPU plugin (``precision`` ``'f32'`` pinned, or
        ``'bf16'``): an ``.onnx`` of ``tools/export.py``, or the ``.xml`` of its ``--int8
        --backend openvino``; ``pip install openvino``."""
        from .backends import open_graph
        return cls._graph(path, lambda: open_graph(path, 'openvino', precision,
                                                   threads=threads))

    @classmethod
    def _graph(cls, path: str, session) -> 'Detector':
        from .onnx_export import read_sidecar
        info = read_sidecar(path)
        graph = session()
        det = cls(graph.backend, info['classes'])
        det.info, det.session = info, graph
        return det

    def predict(self, image, score_thr: float = 0.0) -> Detections:
        """Detections on one image (a path, an H x W x 3 RGB array or a PIL image)."""
        rgb = read_image(image)
        if self.backend == 'pytorch':
            from mmdet.apis import inference_detector
            sample = inference_detector(self.model, np.ascontiguousarray(rgb[..., ::-1]))
            pred = sample.pred_instances
            return _keep(pred.bboxes.detach().float().cpu().numpy(),
                         pred.scores.detach().float().cpu().numpy(),
                         pred.labels.detach().cpu().numpy(), score_thr, self.classes,
                         rgb.shape[:2])
        shape = self.info['input']['shape']
        height, width = shape[2], shape[3]
        x, scale = letterbox(rgb, height, width, self.info['preprocess']['pad_value'])
        batch = x[None].numpy()
        if shape[0] not in ('N', 1):
            batch = np.repeat(batch, shape[0], axis=0)
        boxes, scores, labels = self.session.run(batch)
        boxes = boxes_back(boxes[0], scale, rgb.shape[:2])
        return _keep(boxes, scores[0], labels[0], score_thr, self.classes, rgb.shape[:2])
