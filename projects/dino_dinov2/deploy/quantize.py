"""INT8 post-training quantization of an exported graph (``tools/export.py --int8``); the
same rule (:func:`decide`) in OpenVINO by NNCF is :mod:`.nncf_quantize` (``--backend
openvino``), and :func:`export_int8` runs either.

onnxruntime's static quantizer in QDQ form (QuantizeLinear/DequantizeLinear around the
quantized products, which onnxruntime and OpenVINO both run as integer products):
activations uint8 asymmetric, weights int8 symmetric per output channel, ranges from the
calibration images (min/max). What is quantized (``scope``):

- ``'default'``: the products with a learned weight (MatMul/Gemm: the ViT's qkv, proj and
  MLP, the encoder's and decoder's projections and FFNs, the query and reference heads),
  **except** the final class and box layers (every ``cls_branches`` layer and the last
  layer of every ``reg_branches`` MLP, the encoder's proposal heads included) and any
  product whose input comes from a Softmax (an attention-value product, e.g. the first
  decoder layer's, whose values are constant). Kept in float with them: the
  attention-score and attention-value products, LayerNorm, Softmax, the deformable
  sampling (GridSample), every other operator, and the quantized products' outputs (no
  QuantizeLinear after them). The per-layer errors behind this choice are in
  docs/deploy.md (``tools/analysis_tools/int8_layer_error.py`` measures them).
- ``'products'``: every MatMul/Gemm, attention and final layers included;
- ``'everything'``: every operator onnxruntime can quantize, per-tensor weights (the
  full-graph quantization published DETR results warn about; for the accuracy gate to
  refuse).
"""
from __future__ import annotations

import os
import os.path as osp
import re
import tempfile
import time
from collections import defaultdict
from typing import Callable, Dict, Iterable, List, Optional, Tuple

import numpy as np

from .onnx_export import ExportError, require

SCOPES = ('default', 'products', 'everything')
PRODUCTS = ('MatMul', 'Gemm')


class QuantizationError(ExportError):
    """A quantization request that cannot be met."""


def _producers(graph) -> Dict[str, object]:
    return {out: node for node in graph.node for out in node.output}


def _from_softmax(node, producers, passthrough=('Identity', 'Dropout', 'Cast')) -> bool:
    src = producers.get(node.input[0])
    while src is not None and src.op_type in passthrough:
        src = producers.get(src.input[0])
    return src is not None and src.op_type == 'Softmax'


def _last_box_layers(names: Iterable[str]) -> set:
    """The last layer of each ``reg_branches.K`` MLP (``reg_branches.K.I``, largest I)."""
    last: Dict[str, Tuple[int, str]] = {}
    for name in names:
        m = re.search(r'(.*reg_branches\.\d+)\.(\d+)/', name)
        if m:
            index = int(m.group(2))
            if m.group(1) not in last or index > last[m.group(1)][0]:
                last[m.group(1)] = (index, name)
    return {name for _, name in last.values()}


def decide(products: Iterable[Tuple[str, bool, bool]],
           scope: str = 'default') -> Tuple[List[str], Dict[str, str]]:
    """(names to quantize, {kept in float: why}) for ``scope`` from the graph's products as
    (name, has a learned weight, its input comes from a Softmax): the one rule both
    quantizers follow (onnxruntime's on the ONNX graph, NNCF's on OpenVINO's)."""
    if scope not in SCOPES:
        raise QuantizationError(f'--int8-scope {scope!r}: one of {", ".join(SCOPES)}')
    products = list(products)
    box_last = _last_box_layers(name for name, _, _ in products)
    quantize, kept = [], {}
    for name, weight, after_softmax in products:
        if scope != 'default':
            quantize.append(name)
        elif not weight:
            kept[name] = 'attention product (two activations)'
        elif after_softmax:
            kept[name] = 'attention-value product'
        elif 'cls_branches' in name:
            kept[name] = 'final class layer'
        elif name in box_last:
            kept[name] = 'final box layer'
        else:
            quantize.append(name)
    return quantize, kept


def plan(model, scope: str = 'default') -> Tuple[List[str], Dict[str, str]]:
    """:func:`decide` on a pre-processed ONNX graph (constants folded: a learned weight is
    an initializer)."""
    graph = model.graph
    weights = {init.name for init in graph.initializer}
    producers = _producers(graph)
    return decide(((n.name, len(n.input) > 1 and n.input[1] in weights,
                    _from_softmax(n, producers))
                   for n in graph.node if n.op_type in PRODUCTS), scope)


def summarize(kept: Dict[str, str]) -> str:
    counts = defaultdict(int)
    for why in kept.values():
        counts[why] += 1
    def plural(why: str, n: int) -> str:  # 'attention product (...)' -> 'attention products (...)'
        noun, sep, rest = why.partition(' (')
        return f'{noun}{"s" if n > 1 else ""}{sep}{rest}'
    return ', '.join(f'{n} {plural(why, n)}' for why, n in sorted(counts.items()))


class _Reader:
    """onnxruntime's CalibrationDataReader over the letterboxed images."""

    def __init__(self, batches: Callable[[], Iterable[np.ndarray]], input_name: str):
        self.batches, self.input_name = batches, input_name
        self.iterator = None
        self.count = 0

    def get_next(self):
        if self.iterator is None:
            self.iterator = iter(self.batches())
        batch = next(self.iterator, None)
        if batch is None:
            return None
        self.count += 1
        return {self.input_name: batch}

    def rewind(self):
        self.iterator = None


def quantize(float_path: str, out_path: str, batches: Callable[[], Iterable[np.ndarray]],
             scope: str = 'default') -> dict:
    """Write the INT8 graph of ``float_path`` to ``out_path``; ``batches()`` yields the
    calibration inputs. Returns what was done (counts, the float-kept reasons, seconds)."""
    onnx = require('onnx')
    require('onnxruntime')
    from onnxruntime.quantization import (CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process
    start = time.time()
    folder = osp.dirname(osp.abspath(out_path))
    with tempfile.TemporaryDirectory(dir=folder, prefix='.int8-') as tmp:
        pre = osp.join(tmp, 'pre.onnx')
        # shapes inferred, constants folded (a learned weight becomes an initializer),
        # MatMul+Add fused to Gemm: what the quantizer and the plan read
        quant_pre_process(float_path, pre, skip_symbolic_shape=True)
        model = onnx.load(pre)
        nodes, kept = plan(model, scope)
        reader = _Reader(batches, model.graph.input[0].name)
        everything = scope == 'everything'
        quantize_static(
            pre, out_path, reader, quant_format=QuantFormat.QDQ,
            op_types_to_quantize=None if everything else list(PRODUCTS),
            nodes_to_quantize=None if everything else nodes,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            per_channel=not everything, calibrate_method=CalibrationMethod.MinMax,
            # (no CalibMaxIntermediateOutputs: onnxruntime 1.32 drops each full chunk
            # without computing its ranges; the min/max calibrator keeps only two numbers
            # per tensor and image anyway)
            extra_options={'WeightSymmetric': True, 'ActivationSymmetric': False})
    if not reader.count:
        raise QuantizationError('calibration saw no image')
    described = dict(format='QDQ', activations='uint8 asymmetric, per tensor, min/max',
                     weights='int8 symmetric, per tensor' if everything else
                     'int8 symmetric, per output channel')
    return dict(scope=scope, quantized=(len(nodes) if not everything else 'all'),
                products=len(nodes) + len(kept), kept=kept, images=reader.count,
                described=described, seconds=round(time.time() - start, 1))


def size_mb(path: str) -> float:
    return os.path.getsize(path) / 2 ** 20


class GateError(QuantizationError):
    """The INT8 graph lost more AP than ``--max-drop`` allows (nothing was written)."""

    def __init__(self, message: str, float_ap: float, int8_ap: float) -> None:
        super().__init__(message)
        self.float_ap, self.int8_ap = float_ap, int8_ap


def export_int8(config: str, checkpoint: str, out: str, calib_images: List[str],
                shape: Tuple[int, int] = (512, 512), batch: int = 1, scope: str = 'default',
                max_drop: Optional[float] = None, val: Optional[str] = None,
                val_images: Optional[int] = None, cfg_options: Optional[dict] = None,
                deform_attn: str = 'onnx', log: Callable[[str], None] = print,
                backend: str = 'onnxruntime') -> dict:
    """The float32 graph (:func:`.onnx_export.export`), quantized on ``calib_images``,
    written to ``out`` with its sidecar: by onnxruntime (:func:`quantize`, a QDQ ``.onnx``
    both runtimes run) or, ``backend='openvino'``, by NNCF in OpenVINO
    (:func:`.nncf_quantize.quantize`, OpenVINO IR: ``out`` ends in ``.xml``, its ``.bin``
    beside; the fused sampling of ``deform_attn='openvino'`` stays in it). With
    ``max_drop``, the float32 and INT8 graphs are first evaluated in ``backend`` on the
    validation set (``val`` or the config's, :func:`.runtime.evaluate_graph`) and nothing
    is written when the INT8 bbox mAP is lower by more than ``max_drop``
    (:class:`GateError`, both APs in it)."""
    import json

    from ..checkpoint import atomic_write
    from .calibration import letterboxed
    from .onnx_export import export, needs_extension, sidecar_path
    if scope not in SCOPES:
        raise QuantizationError(f'--int8-scope {scope!r}: one of {", ".join(SCOPES)}')
    if max_drop is not None and max_drop < 0:
        raise QuantizationError(f'--max-drop {max_drop}: must be 0 or more')
    openvino = backend == 'openvino'
    suffix = '.xml' if openvino else '.onnx'
    if not out.endswith(suffix):
        raise ExportError(f'--out {out}: the file name must end in {suffix}' + (
            ' (--int8 --backend openvino writes OpenVINO IR: MODEL.xml and MODEL.bin)'
            if openvino else ''))
    if openvino:
        require('openvino', 'openvino')
        require('nncf', 'openvino')
    folder = osp.dirname(osp.abspath(out))
    os.makedirs(folder, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder, prefix='.export-') as tmp:
        float_path, int8_path = osp.join(tmp, 'float32.onnx'), osp.join(tmp, 'int8' + suffix)
        info = export(config, checkpoint, float_path, shape, batch, cfg_options=cfg_options,
                      deform_attn=deform_attn)
        n = len(calib_images)
        log(f'float32 graph exported in {info["seconds"]} s; calibrating on {n} '
            f'image{"s" if n != 1 else ""}' + (' in OpenVINO (NNCF)' if openvino else ''))
        height, width = info['input']['shape'][2:]
        pad = info['preprocess']['pad_value']
        batches = lambda: letterboxed(calib_images, height, width, pad, batch)  # noqa: E731
        if openvino:
            from . import nncf_quantize
            done = nncf_quantize.quantize(float_path, int8_path, batches, scope,
                                          extension=needs_extension(info),
                                          subset=-(-len(calib_images) // batch))
        else:
            done = quantize(float_path, int8_path, batches, scope)
        log(f'INT8 ({scope}): {done["quantized"]} of {done["products"]} products quantized'
            + (f'; kept in float: {summarize(done["kept"])}' if done['kept'] else '')
            + f' ({done["seconds"]} s)')
        info['int8'] = dict(scope=scope, quantized=done['quantized'],
                            products=done['products'], kept_float=summarize(done['kept']),
                            calibration_images=done['images'], **done['described'])
        if max_drop is not None:
            from .runtime import evaluate_graph
            with open(sidecar_path(int8_path), 'w') as f:  # what opens it reads its sidecar
                json.dump(info, f)
            aps = {}
            for name, path in (('float32', float_path), ('int8', int8_path)):
                metrics = evaluate_graph(config, path, info, osp.join(tmp, name), val,
                                         val_images, backend=backend,
                                         cfg_options=cfg_options)
                aps[name] = _bbox_map(metrics)
                log(f'gate: {name} bbox mAP {aps[name]:.4f} ({backend})')
            drop = aps['float32'] - aps['int8']
            info['int8']['gate'] = dict(float32_map=aps['float32'], int8_map=aps['int8'],
                                        max_drop=max_drop, val=val or "the config's",
                                        backend=backend)
            if drop > max_drop:
                raise GateError(
                    f'INT8 bbox mAP {aps["int8"]:.4f} is {drop:.4f} below the float32 graph\'s '
                    f'{aps["float32"]:.4f}, more than --max-drop {max_drop}: {out} not '
                    'written (try --int8-scope default, more --calib-images, or keep the '
                    'float32 graph)', aps['float32'], aps['int8'])
        if openvino:  # the weights first: an .xml is only ever beside its own .bin
            with open(osp.splitext(int8_path)[0] + '.bin', 'rb') as f:
                atomic_write(f.read(), osp.splitext(out)[0] + '.bin')
        with open(int8_path, 'rb') as f:
            atomic_write(f.read(), out)
        atomic_write(json.dumps(info, indent=1), sidecar_path(out))
    info['bytes'] = osp.getsize(out) + (osp.getsize(osp.splitext(out)[0] + '.bin')
                                        if openvino else 0)
    return info


def _bbox_map(metrics: dict) -> float:
    for key in ('coco/bbox_mAP', 'bbox_mAP'):
        if key in metrics:
            return float(metrics[key])
    raise QuantizationError(f'the evaluation gave no bbox mAP ({sorted(metrics)})')
