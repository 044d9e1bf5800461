"""Deployment: one ONNX graph from image to detections (float32 or INT8), the runtimes
that run it (onnxruntime, OpenVINO), a Python API."""
from .backends import BACKENDS, GraphSession, open_graph
from .exportable import ExportableDetector, fix_position_embedding
from .letterbox import ImageError, ImageNotFoundError, boxes_back, letterbox, read_image
from .onnx_export import (ExportError, check, export, parse_shape, read_sidecar,
                          sidecar_path)
from .predictor import Detections, Detector

__all__ = ['BACKENDS', 'GraphSession', 'open_graph', 'ExportableDetector',
           'fix_position_embedding', 'ImageError', 'ImageNotFoundError', 'boxes_back',
           'letterbox', 'read_image', 'ExportError', 'check', 'export', 'parse_shape',
           'read_sidecar', 'sidecar_path', 'Detections', 'Detector']
