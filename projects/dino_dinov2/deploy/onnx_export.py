"""Export a trained detector to ONNX, with the sidecar a runtime needs, and check it.

The exporter is ``torch.onnx.export(..., dynamo=False)`` (TorchScript tracing; passed
explicitly: torch >= 2.9 defaults to the dynamo exporter, which needs onnxscript), opset 17
(GridSample for the deformable attention, LayerNorm as one node). The graph is
:class:`.exportable.ExportableDetector`: float32 RGB 0-255 images of the export size in,
``boxes`` / ``scores`` / ``labels`` out. ``model.json`` beside ``model.onnx`` says how an
image of any size enters it (:mod:`.letterbox`), the class names, the source checkpoint's
sha256 and the versions.
"""
from __future__ import annotations

import json
import logging
import os
import os.path as osp
import re
import time
from typing import Optional, Sequence, Tuple

import torch

from ..errors import UserError

OPSET = 17
# the coarsest pyramid level has stride 64: a side below it leaves that level empty
MIN_SIDE = 64
INPUT_NAMES = ['images']
OUTPUT_NAMES = ['boxes', 'scores', 'labels']


class ExportError(UserError, ValueError):
    """An export request that cannot be met (shape, file, missing package)."""


def parse_shape(text: str) -> Tuple[int, int]:
    """``'512x512'`` (height x width) -> (512, 512); one-line errors otherwise."""
    m = re.fullmatch(r'\s*(-?\d+)\s*[xX]\s*(-?\d+)\s*', str(text))
    if not m:
        raise ExportError(f'--shape {text!r}: give HEIGHTxWIDTH, e.g. 512x512')
    h, w = int(m.group(1)), int(m.group(2))
    if h <= 0 or w <= 0:
        raise ExportError(f'--shape {text}: height and width must be positive')
    if h < MIN_SIDE or w < MIN_SIDE:
        raise ExportError(f'--shape {text}: each side must be at least {MIN_SIDE} px (the '
                          f'coarsest pyramid level has stride {MIN_SIDE})')
    return h, w


def require(module: str, extra: str = 'deploy'):
    """Import ``module`` or stop with the install line."""
    import importlib
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ExportError(f'{module} is not installed: pip install "dino-dinov2[{extra}]" '
                          f'(or pip install {module})') from None


DEFORM_ATTN = ('onnx', 'pytorch', 'openvino')


def load_model(config: str, checkpoint: str, cfg_options: Optional[dict] = None,
               deform_attn: str = 'onnx'):
    """(config, model on the CPU in eval mode with ``checkpoint`` loaded) with the
    checkpoint checked against the config's model first; its deformable attention runs
    ``deform_attn`` (``'onnx'``: the layout the export traces; ``'pytorch'``: mmcv's;
    ``'openvino'``: ``'onnx'``'s, traced as one fused node)."""
    from mmengine.runner import load_checkpoint

    from ..checkpoint import (check_checkpoint_file, check_checkpoint_fits,
                              install_checkpoint_loader)
    from ..cli.config_setup import build_target_model, load_config
    check_checkpoint_file(checkpoint)
    cfg = load_config(config, cfg_options)
    if deform_attn not in DEFORM_ATTN:
        raise ExportError(f'--deform-attn {deform_attn!r}: one of {", ".join(DEFORM_ATTN)}')
    if 'deform_attn_impl' in cfg.model:
        cfg.model.deform_attn_impl = deform_attn  # GridSample: what every ONNX runtime has
    model = build_target_model(cfg)
    check_checkpoint_fits(model, checkpoint, 'export')
    install_checkpoint_loader()
    ckpt = load_checkpoint(model, checkpoint, map_location='cpu', strict=True,
                           logger='silent')
    meta = ckpt.get('meta', {}) if isinstance(ckpt, dict) else {}
    classes = (meta.get('dataset_meta') or {}).get('classes')
    if classes is None:
        from ..original_checkpoint import config_classes
        classes = config_classes(cfg)
    model.dataset_meta = dict(classes=tuple(classes or ()))
    return cfg, model.eval()


def _sha256(path: str) -> str:
    from ..original_checkpoint import sha256
    return sha256(path)


ATTENTION_FORMS = {
    'onnx': 'GridSample per level, points x queries as rows, levels accumulated',
    'pytorch': "GridSample per level, mmcv's layout (stacked levels)",
    'openvino': 'one dino_dinov2::MSDeformAttn node per layer: the fused kernel of the '
                "project's OpenVINO extension (OpenVINO only)"}


def needs_extension(info: dict) -> bool:
    """Whether the graph of sidecar ``info`` holds the fused OpenVINO node."""
    return info.get('export', {}).get('deform_attn') == 'openvino'


def _fused_or_standard(deform_attn: str) -> str:
    """``'openvino'`` where its extension builds and loads here, else ``'onnx'``, saying
    why (the standard graph runs everywhere)."""
    if deform_attn != 'openvino':
        return deform_attn
    from mmengine.logging import print_log

    from .openvino_ext import ExtensionError, shared_core
    try:
        shared_core(extension=True)  # ImportError without openvino
    except (ImportError, ExtensionError) as e:
        print_log(f'--deform-attn openvino: {e}; writing the standard graph '
                  '(--deform-attn onnx) instead', logger='current', level=logging.WARNING)
        return 'onnx'
    return deform_attn


def sidecar(model, exportable, config: str, checkpoint: str, batch: Optional[int],
            simplified: bool, deform_attn: str = 'onnx') -> dict:
    import mmdet
    import timm
    pre = model.data_preprocessor
    mean = [round(float(v), 4) for v in pre.mean.flatten()]
    std = [round(float(v), 4) for v in pre.std.flatten()]
    return dict(
        format='dino-dinov2 onnx 1',
        classes=list(model.dataset_meta.get('classes', ())),
        input=dict(name='images', shape=[batch or 'N', 3, exportable.height,
                                         exportable.width],
                   dtype='float32', channels='RGB', range='0-255',
                   normalization=dict(mean=mean, std=std, inside_graph=True)),
        outputs=dict(boxes='N x K x 4, x1 y1 x2 y2 in input pixels', scores='N x K',
                     labels='N x K int64 (index into classes)', K=exportable.topk),
        preprocess=dict(
            resize='keep aspect ratio, fit inside height x width: scale = min(H / h, '
                   'W / w), new size = int(h * scale + 0.5) x int(w * scale + 0.5)',
            interpolation='bilinear (Pillow), as the config\'s test pipeline',
            pad='bottom and right to height x width, with the mean colour (0 after '
                'normalization)',
            pad_value=mean, boxes_back='divide x by new_w / w and y by new_h / h, clip'),
        export=dict(exporter='torch.onnx.export(dynamo=False)', opset=OPSET,
                    simplified=simplified, dynamic_batch=batch is None,
                    deform_attn=deform_attn,
                    deformable_attention=ATTENTION_FORMS[deform_attn]),
        source=dict(config=osp.relpath(config) if not osp.isabs(config) else
                    osp.basename(config),
                    checkpoint=osp.basename(checkpoint), sha256=_sha256(checkpoint)),
        versions=dict(torch=str(torch.__version__), mmdet=mmdet.__version__,
                      timm=timm.__version__, onnx=require('onnx').__version__),
    )


def export(config: str, checkpoint: str, out: str, shape: Tuple[int, int] = (512, 512),
           batch: int = 1, dynamic_batch: bool = False, simplify: bool = False,
           cfg_options: Optional[dict] = None, deform_attn: str = 'onnx') -> dict:
    """Write ``out`` (ONNX) and ``<out stem>.json`` (the sidecar); returns the sidecar
    with ``seconds``. Nothing is left at ``out`` when anything fails. ``deform_attn``:
    the deformable attention's form in the graph (:data:`ATTENTION_FORMS`)."""
    from ..checkpoint import atomic_write
    from .exportable import ExportableDetector
    onnx = require('onnx')
    if batch < 1:
        raise ExportError(f'--batch {batch}: must be at least 1')
    if not out.endswith('.onnx'):
        raise ExportError(f'--out {out}: the file name must end in .onnx')
    start = time.time()
    deform_attn = _fused_or_standard(deform_attn)
    cfg, model = load_model(config, checkpoint, cfg_options, deform_attn)
    height, width = shape
    wrapper = ExportableDetector(model, height, width).eval()
    example = torch.zeros(batch, 3, height, width)
    folder = osp.dirname(osp.abspath(out))
    os.makedirs(folder, exist_ok=True)
    tmp = osp.join(folder, f'.{osp.basename(out)}.tmp-{os.getpid()}')
    try:
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')  # the tracer's notes on constant shapes
            torch.onnx.export(
                wrapper, (example, ), tmp, input_names=INPUT_NAMES,
                output_names=OUTPUT_NAMES, opset_version=OPSET, dynamo=False,
                custom_opsets={'dino_dinov2': 1} if deform_attn == 'openvino' else None,
                dynamic_axes=({name: {0: 'N'} for name in INPUT_NAMES + OUTPUT_NAMES}
                              if dynamic_batch else None))
        graph = onnx.load(tmp)
        onnx.checker.check_model(graph)
        simplified = False
        if simplify:
            onnxslim = require('onnxslim')
            graph = onnxslim.slim(graph)
            onnx.checker.check_model(graph)
            simplified = True
        info = sidecar(model, wrapper, config, checkpoint, None if dynamic_batch else batch,
                       simplified, deform_attn)
        data = graph.SerializeToString()
        atomic_write(data, out)
        atomic_write(json.dumps(info, indent=1), sidecar_path(out))
    finally:
        if osp.exists(tmp):
            os.unlink(tmp)
    info['seconds'] = round(time.time() - start, 1)
    info['bytes'] = osp.getsize(out)
    return info


def graph_kind(path: str) -> str:
    """What the file at ``path`` is, for messages: ONNX, or OpenVINO IR (``--int8
    --backend openvino``)."""
    return 'OpenVINO IR' if path.endswith('.xml') else 'ONNX file'


def sidecar_path(onnx_path: str) -> str:
    return osp.splitext(onnx_path)[0] + '.json'


def read_sidecar(onnx_path: str) -> dict:
    path = sidecar_path(onnx_path)
    if not osp.isfile(onnx_path):
        raise ExportError(f'{graph_kind(onnx_path)} not found: {onnx_path}')
    if not osp.isfile(path):
        raise ExportError(f'{path} not found: the sidecar tools/export.py writes beside '
                          f'{osp.basename(onnx_path)} (classes, input size, resize rule)')
    with open(path) as f:
        return json.load(f)


def check(config: str, checkpoint: str, onnx_path: str, images: Sequence[str],
          cfg_options: Optional[dict] = None, box_tol: float = 0.05,
          score_tol: float = 1e-4, min_agreement: float = 0.98,
          backend: str = 'onnxruntime', precision: str = 'f32') -> Tuple[list, bool]:
    """The graph in ``backend`` and PyTorch (the same wrapper, eager, float32) on the same
    letterboxed images: per image the agreement of the top K detections
    (:func:`compare_detections`), the largest box (px) and score differences. Returns
    (rows, all within the tolerances)."""
    from .backends import open_graph
    from .exportable import ExportableDetector
    from .letterbox import letterbox, read_image
    info = read_sidecar(onnx_path)
    session = open_graph(onnx_path, backend, precision)
    _, model = load_model(config, checkpoint, cfg_options,
                          info['export'].get('deform_attn', 'pytorch'))
    height, width = info['input']['shape'][2:]
    wrapper = ExportableDetector(model, height, width).eval()
    mean = info['preprocess']['pad_value']
    rows, ok = [], True
    for path in images:
        img = read_image(path)
        x, _ = letterbox(img, height, width, mean)
        batch = x[None]
        with torch.no_grad():
            ref = [t.numpy() for t in wrapper(batch)]
        fixed = info['input']['shape'][0]
        feed = batch.numpy() if fixed in ('N', 1) else batch.repeat(fixed, 1, 1, 1).numpy()
        got = session.run(feed)
        row = compare_detections([g[0] for g in got], [r[0] for r in ref], score_tol, box_tol)
        good = row['labels'] >= min_agreement
        ok = ok and good
        rows.append(dict(row, image=path, ok=good))
    return rows, ok


def compare_detections(got, ref, score_tol: float, box_tol: float) -> dict:
    """Top-K detections of two runs of the same graph: each of ``got``'s (boxes, scores,
    labels) matched to one of ``ref``'s with the same label, a score within ``score_tol``
    and a box within ``box_tol`` px. Scores that tie to float32 rounding may come in
    either order, so positions are not compared; and where two encoder proposals tie,
    the two queries they swap give other detections (a few of K). Returns the matched
    fraction (``labels``) and the largest box (px) and score differences of the
    matched."""
    import numpy as np
    g_boxes, g_scores, g_labels = (np.asarray(a) for a in got)
    r_boxes, r_scores, r_labels = (np.asarray(a) for a in ref)
    free = np.ones(len(r_scores), dtype=bool)
    box_diff = score_diff = 0.0
    matched = 0
    for i in range(len(g_scores)):
        cand = np.nonzero(free & (r_labels == g_labels[i])
                          & (np.abs(r_scores - g_scores[i]) <= score_tol))[0]
        dist = np.abs(r_boxes[cand] - g_boxes[i]).max(1) if len(cand) else np.zeros(0)
        if not len(cand) or dist.min() > box_tol:
            continue
        j = cand[int(dist.argmin())]
        free[j] = False
        matched += 1
        box_diff = max(box_diff, float(dist.min()))
        score_diff = max(score_diff, float(abs(r_scores[j] - g_scores[i])))
    return dict(labels=matched / max(len(g_scores), 1), boxes=box_diff, scores=score_diff)
