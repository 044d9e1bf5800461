"""The deformable sampling's forms in an exported graph, side by side on this CPU.

``python tools/analysis_tools/deform_attn_graph.py [--size 512] [--repeats 30]``

Each form is one encoder layer's sampling (a query per value) and one decoder layer's (900
queries) of the recipe at ``--size`` (4 levels, strides 8-64; 8 heads x 32 channels, 4
points), exported alone to ONNX (opset 17) and timed on onnxruntime (float32) and OpenVINO
(f32 pinned, bf16) with the threads of ``physical_cores()``; medians of interleaved runs.
The largest absolute difference is against mmcv's PyTorch formula in eager float32.

Forms:
  grid    mmcv's layout (the model's ``impl='pytorch'``): per level a GridSample over
          (B*heads, 32, H, W), the four results stacked, weighted, summed (the export
          before ``impl='onnx'``)
  onnx    the shipped ``impl='onnx'``: the same GridSamples with the grid laid out
          (B*heads, points, queries), the weighted sum over points on an outer axis, levels
          accumulated (no stack)
  canvas  one GridSample per layer: the four levels pasted into one canvas with zero gaps,
          each level's locations mapped (and clamped into its gap) onto it
  gather  bilinear sampling in Gather ops: four corner values gathered from (tokens,
          channels) per head, weighted by corner, validity and attention weight
  fused   one dino_dinov2::MSDeformAttn node (``--deform-attn openvino``): the project's
          OpenVINO extension, a loop over (query, head) on the value as the model lays it
          out (tokens, heads, channels); OpenVINO only, where the extension builds
"""
from __future__ import annotations

import argparse
import io
import statistics
import time
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from projects.dino_dinov2.deploy.backends import physical_cores
from projects.dino_dinov2.models.deformable_attention import OpenVinoSampling, msda_pytorch

HEADS, DIM, POINTS = 8, 32, 4


def levels_for(size: int) -> List[Tuple[int, int]]:
    return [(-(-size // s), -(-size // s)) for s in (8, 16, 32, 64)]


def _canvas(value, shapes, locations, weights):
    bs, _, heads, dim = value.shape
    _, queries, _, num_levels, points, _ = locations.shape
    width = sum(w for _, w in shapes) + num_levels  # a zero column after each level
    height = max(h for h, _ in shapes) + 1  # and a zero row below the tallest
    value = value.permute(0, 2, 3, 1).reshape(bs * heads, dim, -1)
    columns, start, x0 = [], 0, 0
    grids = []
    loc = locations.permute(0, 2, 1, 3, 4, 5).reshape(bs * heads, queries, num_levels,
                                                     points, 2)
    for level, (h, w) in enumerate(shapes):
        block = value[..., start:start + h * w].reshape(bs * heads, dim, h, w)
        columns.append(F.pad(block, (0, 1, 0, height - h)))
        # the location in this level's pixels, clamped into its zero border, then in the
        # canvas' normalised coordinates (align_corners=False)
        px = (loc[:, :, level, :, 0] * w - 0.5).clamp(-1, w) + x0
        py = (loc[:, :, level, :, 1] * h - 0.5).clamp(-1, h)
        grids.append(torch.stack([(px + 0.5) / width * 2 - 1,
                                  (py + 0.5) / height * 2 - 1], -1))
        start += h * w
        x0 += w + 1
    canvas = torch.cat(columns, -1)
    grid = torch.cat(grids, 2)  # (B*heads, queries, levels*points, 2)
    sampled = F.grid_sample(canvas, grid, mode='bilinear', padding_mode='zeros',
                            align_corners=False)  # (B*heads, dim, queries, L*P)
    w = weights.permute(0, 2, 1, 3, 4).reshape(bs * heads, 1, queries, num_levels * points)
    out = (sampled * w).sum(-1).view(bs, heads * dim, queries)
    return out.transpose(1, 2)


def _gather(value, shapes, locations, weights):
    bs, _, heads, dim = value.shape
    _, queries, _, num_levels, points, _ = locations.shape
    value = value.permute(0, 2, 1, 3).reshape(bs * heads, -1, dim)  # (BH, tokens, dim)
    loc = locations.permute(0, 2, 1, 3, 4, 5).reshape(bs * heads, queries, num_levels,
                                                     points, 2)
    att = weights.permute(0, 2, 1, 3, 4).reshape(bs * heads, queries, num_levels, points)
    out, start = None, 0
    for level, (h, w) in enumerate(shapes):
        x = loc[:, :, level, :, 0] * w - 0.5
        y = loc[:, :, level, :, 1] * h - 0.5
        x0, y0 = x.floor(), y.floor()
        fx, fy = x - x0, y - y0
        value_l = value[:, start:start + h * w]
        for dx, dy, cw in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)),
                           (0, 1, (1 - fx) * fy), (1, 1, fx * fy)):
            cx, cy = x0 + dx, y0 + dy
            valid = (cx >= 0) & (cx <= w - 1) & (cy >= 0) & (cy <= h - 1)
            index = (cy.clamp(0, h - 1) * w + cx.clamp(0, w - 1)).long()
            index = index.reshape(bs * heads, -1, 1).expand(-1, -1, dim)
            corner = torch.gather(value_l, 1, index)  # (BH, Q*P, dim)
            weight = (cw * valid.to(cw.dtype) * att[:, :, level]).reshape(bs * heads, -1, 1)
            part = (corner * weight).reshape(bs * heads, queries, points, dim).sum(2)
            out = part if out is None else out + part
        start += h * w
    return out.reshape(bs, heads, queries, dim).permute(0, 2, 1, 3).reshape(
        bs, queries, heads * dim)


FORMS = {
    'grid': lambda v, s, l, w: msda_pytorch(v, s, l, w, layout='mmcv'),
    'onnx': lambda v, s, l, w: msda_pytorch(v, s, l, w, layout='onnx'),
    'canvas': _canvas,
    'gather': _gather,
    'fused': lambda v, s, l, w: OpenVinoSampling.apply(v, l, w, tuple(s)),
}


class Sampling(torch.nn.Module):
    def __init__(self, form: str, shapes: Sequence[Tuple[int, int]]) -> None:
        super().__init__()
        self.form, self.shapes = FORMS[form], [tuple(s) for s in shapes]

    def forward(self, value, locations, weights):
        return self.form(value, self.shapes, locations, weights)


def inputs(shapes, queries: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    tokens = sum(h * w for h, w in shapes)
    value = torch.randn(1, tokens, HEADS, DIM, generator=g)
    # locations around the image and a little outside it (the zero padding matters)
    locations = torch.rand(1, queries, HEADS, len(shapes), POINTS, 2, generator=g) * 1.1 - 0.05
    weights = torch.rand(1, queries, HEADS, len(shapes), POINTS, generator=g)
    weights = weights / weights.sum((-1, -2), keepdim=True)
    return value, locations, weights


def to_onnx(module, args) -> bytes:
    buf = io.BytesIO()
    torch.onnx.export(module, args, buf, input_names=['value', 'locations', 'weights'],
                      output_names=['out'], opset_version=17, dynamo=False,
                      custom_opsets={'dino_dinov2': 1})
    return buf.getvalue()


def runners(model: bytes, feeds: Dict[str, np.ndarray], threads: int, fused: bool = False):
    out = {}
    if not fused:
        import onnxruntime as ort
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        session = ort.InferenceSession(model, options, providers=['CPUExecutionProvider'])
        out['onnxruntime'] = lambda: session.run(None, feeds)[0]
    from projects.dino_dinov2.deploy.openvino_ext import shared_core
    try:
        core = shared_core(fused)  # the process's one Core (upstream/openvino_core.py)
    except ImportError:  # no openvino
        return out
    ov_model = core.read_model(model=model)
    for precision in ('f32', 'bf16'):
        compiled = core.compile_model(ov_model, 'CPU', {
            'INFERENCE_PRECISION_HINT': precision, 'PERFORMANCE_HINT': 'LATENCY',
            'INFERENCE_NUM_THREADS': threads})
        request = compiled.create_infer_request()
        out[f'openvino-{precision}'] = (
            lambda r=request: next(iter(r.infer(list(feeds.values())).values())))
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--size', type=int, default=512, help='image side (px)')
    parser.add_argument('--repeats', type=int, default=30)
    parser.add_argument('--forms', nargs='+', default=list(FORMS), choices=list(FORMS))
    args = parser.parse_args(argv)
    if 'fused' in args.forms:
        from projects.dino_dinov2.deploy.openvino_ext import ExtensionError, library
        try:
            library()
        except ExtensionError as e:
            print(f'fused: not measured ({e})')
            args.forms = [f for f in args.forms if f != 'fused']
    shapes = levels_for(args.size)
    tokens = sum(h * w for h, w in shapes)
    threads = physical_cores()
    print(f'{args.size}x{args.size}: levels {shapes}, {tokens} values, {HEADS} heads x {DIM}, '
          f'{POINTS} points; {threads} threads; median ms of {args.repeats} interleaved runs')
    rows = []
    for layer, queries in (('encoder', tokens), ('decoder', 900)):
        value, locations, weights = inputs(shapes, queries)
        with torch.no_grad():
            reference = msda_pytorch(value, shapes, locations, weights).numpy()
        feeds = {'value': value.numpy(), 'locations': locations.numpy(),
                 'weights': weights.numpy()}
        runs = {}
        for form in args.forms:
            module = Sampling(form, shapes).eval()
            with torch.no_grad():
                eager = module(value, locations, weights).numpy()
            for backend, run in runners(to_onnx(module, (value, locations, weights)), feeds,
                                        threads, fused=form == 'fused').items():
                out = np.asarray(run(), dtype=np.float32)
                runs[form, backend] = (run, [], float(np.abs(out - reference).max()))
            runs[form, 'eager'] = (None, [], float(np.abs(eager - reference).max()))
        timed = [k for k, v in runs.items() if v[0] is not None]
        for _ in range(3):  # warm-up
            for k in timed:
                runs[k][0]()
        for _ in range(args.repeats):
            for k in timed:
                t = time.perf_counter()
                runs[k][0]()
                runs[k][1].append((time.perf_counter() - t) * 1000)
        for (form, backend), (_, times, diff) in runs.items():
            rows.append((layer, queries, form, backend,
                         statistics.median(times) if times else None, diff))
    print('| layer | queries | form | runtime | ms | largest difference to mmcv\'s formula |')
    print('| --- | --- | --- | --- | --- | --- |')
    for layer, queries, form, backend, ms, diff in rows:
        ms_text = '-' if ms is None else f'{ms:.1f}'
        print(f'| {layer} | {queries} | {form} | {backend} | {ms_text} | {diff:.2e} |')


if __name__ == '__main__':
    main()
