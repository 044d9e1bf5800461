"""Deployment: one ONNX graph from image to detections, its runtime, a Python API."""
from .exportable import ExportableDetector, fix_position_embedding
from .letterbox import ImageError, ImageNotFoundError, boxes_back, letterbox, read_image
from .onnx_export import (ExportError, check, export, onnx_session, parse_shape, read_sidecar,
                          sidecar_path)
from .predictor import Detections, Detector

__all__ = ['ExportableDetector', 'fix_position_embedding', 'ImageError',
           'ImageNotFoundError', 'boxes_back', 'letterbox', 'read_image', 'ExportError',
           'check', 'export', 'onnx_session', 'parse_shape', 'read_sidecar', 'sidecar_path',
           'Detections', 'Detector']
