"""INT8 post-training quantization in OpenVINO, by NNCF (``tools/export.py --int8
--backend openvino``): the graph OpenVINO runs, the fused deformable sampling of
``--deform-attn openvino`` included (onnxruntime's quantizer calibrates in onnxruntime,
which cannot run that node), written as OpenVINO IR (``model_int8.xml`` + ``.bin``).

The same rule as onnxruntime's quantizer (:func:`.quantize.decide`), read from OpenVINO's
graph: the MatMuls with a learned weight in INT8 (activations uint8 asymmetric per tensor,
weights int8 symmetric per output channel: NNCF's ``MIXED`` preset), the attention
products, the final class and box layers and every other operator (LayerNorm, Softmax,
the sampling, the convolutions) in float; NNCF's transformer mode, its fast bias
correction, no SmoothQuant (no drop to recover on the measured models: docs/deploy.md).
``'products'``: every MatMul; ``'everything'``: whatever NNCF quantizes in a graph it is
told nothing about (the full-graph quantization for the accuracy gate to refuse).
"""
from __future__ import annotations

import logging
import time
from typing import Callable, Iterable, List, Optional, Tuple

import numpy as np

from ..upstream.openvino_core import signal_stack_kept
from .onnx_export import require
from .quantize import QuantizationError, decide

# what a learned weight passes through on its way to a MatMul in OpenVINO's graph
_WEIGHT_PATH = ('Convert', 'Transpose', 'Reshape', 'Multiply', 'Subtract')
_PASSTHROUGH = ('Convert', 'Reshape', 'Squeeze', 'Unsqueeze')


def _source(node_input):
    return node_input.get_source_output().get_node()


def _is_weight(node) -> bool:
    """A Constant, or a chain of the ops OpenVINO puts between one and a product."""
    while node.get_type_name() in _WEIGHT_PATH:
        node = _source(node.input(0))
    return node.get_type_name() == 'Constant'


def _after_softmax(node) -> bool:
    src = _source(node.input(0))
    while src.get_type_name() in _PASSTHROUGH:
        src = _source(src.input(0))
    return src.get_type_name() in ('Softmax', 'SoftMax')


def products(model) -> List[Tuple[str, bool, bool]]:
    """(name, has a learned weight, its input comes from a Softmax) of each MatMul of an
    ``openvino.Model``; OpenVINO names a node after the ONNX node it came from."""
    return [(op.get_friendly_name(), _is_weight(_source(op.input(1))), _after_softmax(op))
            for op in model.get_ordered_ops() if op.get_type_name() == 'MatMul']


class _Calibration:
    """An iterable NNCF may walk more than once (statistics, then bias correction)."""

    def __init__(self, batches: Callable[[], Iterable[np.ndarray]]) -> None:
        self.batches, self.count = batches, 0

    def __iter__(self):
        seen = 0
        for batch in self.batches():
            seen += 1
            self.count = max(self.count, seen)
            yield batch


def quantize(float_path: str, out_path: str, batches: Callable[[], Iterable[np.ndarray]],
             scope: str = 'default', extension: bool = False,
             subset: Optional[int] = None) -> dict:
    """Write the INT8 IR of the ONNX graph ``float_path`` to ``out_path`` (``.xml``, its
    ``.bin`` beside); ``batches()`` yields the calibration inputs (``subset`` of them are
    used: all by default); ``extension``: the graph holds the fused node. Returns what was
    done, as :func:`.quantize.quantize` (``described``: what the sidecar says of it)."""
    ov = require('openvino', 'openvino')
    nncf = require('nncf', 'openvino')
    from nncf.common.logging import nncf_logger
    nncf_logger.setLevel(logging.WARNING)  # a line per operator it leaves alone otherwise
    start = time.time()
    from .openvino_ext import shared_core
    model = shared_core(extension).read_model(float_path)
    everything = scope == 'everything'
    found = products(model)
    names, kept = decide(found, scope)
    ignored = None
    if not everything:
        others = sorted({op.get_type_name() for op in model.get_ordered_ops()} - {'MatMul'})
        ignored = nncf.IgnoredScope(names=sorted(kept), types=others, validate=False)
    data = _Calibration(batches)
    with signal_stack_kept():  # NNCF compiles in Cores of its own (upstream/openvino_core.py)
        quantized = nncf.quantize(
            model, nncf.Dataset(data), preset=nncf.QuantizationPreset.MIXED,
            model_type=None if everything else nncf.ModelType.TRANSFORMER,
            subset_size=subset or 10 ** 9, ignored_scope=ignored,
            advanced_parameters=nncf.AdvancedQuantizationParameters(
                smooth_quant_alphas=nncf.AdvancedSmoothQuantParameters(matmul=-1)))
    if not data.count:
        raise QuantizationError('calibration saw no image')
    ops = quantized.get_ordered_ops()
    fake = sum(op.get_type_name() == 'FakeQuantize' for op in ops)
    if not everything:  # what NNCF placed no quantizer on (a constant input, its own patterns)
        done = {op.get_friendly_name() for op in ops if op.get_type_name() == 'MatMul'
                and _source(op.input(0)).get_type_name() == 'FakeQuantize'}
        kept.update((name, 'NNCF-skipped product (no quantizer placed)')
                    for name in names if name not in done)
        names = [name for name in names if name in done]
    ov.save_model(quantized, out_path, compress_to_fp16=False)  # kept layers stay float32
    described = dict(format='OpenVINO IR (FakeQuantize)', quantizer=f'nncf {nncf.__version__}',
                     activations="uint8 asymmetric, per tensor, the mean of the images' "
                                 'min/max (NNCF MIXED preset)',
                     weights='int8 symmetric, per output channel (NNCF MIXED preset)',
                     fake_quantize=fake)
    return dict(scope=scope, quantized=(len(names) if not everything else 'all'),
                products=len(found), kept=kept, images=data.count, described=described,
                seconds=round(time.time() - start, 1))
