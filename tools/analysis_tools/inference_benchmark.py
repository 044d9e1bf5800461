"""Inference latency of one detector at a fixed input size, per runtime, with each row's
agreement with PyTorch.

Rows (:data:`ROWS`; ``rows=`` picks some):

- ``pytorch-fp32``: the model as it runs in PyTorch (eager float32; the reference);
  ``pytorch-bf16``: under bfloat16 autocast (on request: 4.5x slower on a CPU without
  bf16 matrix units);
- ``onnxruntime``: the exported float32 graph (the deformable attention in the export's
  layout, ``--deform-attn onnx``); ``onnxruntime-gridsample``: the same graph with mmcv's
  layout (the export before this layout); ``onnxruntime-int8``: ``--int8`` on the
  calibration images (``calib``; skipped without them);
- ``openvino-f32`` (precision pinned), ``openvino-bf16``, ``openvino-int8`` (the INT8
  graph): the same files in OpenVINO's CPU plugin, where ``openvino`` is installed;
  ``openvino-f32-fused``, ``openvino-bf16-fused``: the graph of ``--deform-attn openvino``
  (the fused sampling of the project's extension; skipped where it cannot be built);
  ``openvino-int8-fused``: that graph quantized in OpenVINO by NNCF (``--int8 --backend
  openvino --deform-attn openvino``, OpenVINO IR);
- ``tensorrt-fp16``: not measured by this tool (says why).

Every row runs the same wrapper (:class:`projects.dino_dinov2.deploy.ExportableDetector`:
normalization, detector, top-K post-processing) on the same input, batch 1: the first
``check`` image letterboxed, or a seeded random 0-255 image. Latency is the median and 90th
percentile of ``iters`` runs after ``warmup``; each row runs in its own process so that its
peak memory is its own (the CPU's peak resident set, or CUDA's max allocated for PyTorch on
a GPU). Each row's detections are compared with ``pytorch-fp32``'s (the share of the top K
that agree, :func:`projects.dino_dinov2.deploy.onnx_export.compare_detections`, at the
tolerances of ``tools/export.py --check``: float32's, or INT8's for the INT8 and bf16
rows). A row that cannot run here says why instead of a number.
"""
from __future__ import annotations

import json
import os
import os.path as osp
import subprocess
import sys
import time
from typing import List, Optional, Tuple

ROWS = ('pytorch-fp32', 'onnxruntime', 'onnxruntime-gridsample', 'onnxruntime-int8',
        'openvino-f32', 'openvino-bf16', 'openvino-f32-fused', 'openvino-bf16-fused',
        'openvino-int8', 'openvino-int8-fused', 'tensorrt-fp16')
OPTIONAL_ROWS = ('pytorch-bf16', )
GRAPHS = {'onnxruntime': 'model.onnx', 'onnxruntime-gridsample': 'model_gridsample.onnx',
          'onnxruntime-int8': 'model_int8.onnx', 'openvino-f32': 'model.onnx',
          'openvino-bf16': 'model.onnx', 'openvino-int8': 'model_int8.onnx',
          'openvino-f32-fused': 'model_openvino.onnx',
          'openvino-bf16-fused': 'model_openvino.onnx',
          'openvino-int8-fused': 'model_int8_openvino.xml'}
# --check tolerances (box px, score, share) per row kind: float32, or INT8/bf16
FLOAT_TOL, LOOSE_TOL = (0.05, 1e-4, 0.98), (2.0, 0.05, 0.5)


def _percentiles(ms: List[float]) -> Tuple[float, float]:
    import numpy as np
    return float(np.median(ms)), float(np.percentile(ms, 90))


def _peak_mb(device: str) -> float:
    """CUDA's max allocated, or this process's resident peak (``VmHWM``: unlike
    ``getrusage``'s ``ru_maxrss``, which Linux carries over ``exec`` from the parent, it
    is this process's own)."""
    if device.startswith('cuda'):
        import torch
        return torch.cuda.max_memory_allocated() / 2 ** 20
    try:
        with open('/proc/self/status') as f:
            for line in f:
                if line.startswith('VmHWM:'):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _input(shape, image: Optional[str], pad_value):
    """(1, 3, H, W): ``image`` letterboxed (padded with ``pad_value``, the graph's mean
    colour), or a seeded random 0-255 image."""
    import numpy as np
    import torch
    height, width = shape
    if image is None:
        rng = np.random.RandomState(0)
        return torch.from_numpy((rng.rand(1, 3, height, width) * 255).astype(np.float32))
    from projects.dino_dinov2.deploy.letterbox import letterbox, read_image
    return letterbox(read_image(image), height, width, pad_value)[0][None]


def _runner(row: str, config: str, checkpoint: str, graph: Optional[str], shape,
            device: str, cfg_options: Optional[dict] = None, image: Optional[str] = None):
    """(run() -> [boxes, scores, labels] as arrays, runtime description) of one row."""
    import torch
    height, width = shape
    if row.startswith('pytorch'):
        from projects.dino_dinov2.deploy.exportable import ExportableDetector
        from projects.dino_dinov2.deploy.onnx_export import load_model
        _, model = load_model(config, checkpoint, cfg_options, deform_attn='pytorch')
        wrapper = ExportableDetector(model, height, width).eval().to(device)
        pad = [round(float(v), 4) for v in model.data_preprocessor.mean.flatten()]
        x = _input(shape, image, pad).to(device)
        dtype = torch.bfloat16 if row == 'pytorch-bf16' else None

        def run():
            with torch.no_grad(), torch.autocast(device.split(':')[0], dtype=dtype,
                                                 enabled=dtype is not None):
                result = wrapper(x)
            if device.startswith('cuda'):
                torch.cuda.synchronize()
            return [t.float().cpu().numpy() if t.is_floating_point() else t.cpu().numpy()
                    for t in result]
        return run, f'torch {torch.__version__}'
    from projects.dino_dinov2.deploy.backends import open_graph
    from projects.dino_dinov2.deploy.onnx_export import read_sidecar
    backend, _, kind = row.partition('-')
    precision = 'bf16' if kind.startswith('bf16') else 'f32'
    providers = (['CUDAExecutionProvider', 'CPUExecutionProvider']
                 if device.startswith('cuda') else ['CPUExecutionProvider'])
    session = open_graph(graph, backend, precision,
                         providers=providers if backend == 'onnxruntime' else None)
    feed = _input(shape, image, read_sidecar(graph)['preprocess']['pad_value']).numpy()
    return (lambda: list(session.run(feed))), session.describe()


def measure_row(row: str, config: str, checkpoint: str, graph: Optional[str], shape,
                iters: int, warmup: int, device: str, out: str,
                cfg_options: Optional[dict] = None, image: Optional[str] = None) -> dict:
    """One row, in this process; its detections are saved to ``out`` (.npz)."""
    import numpy as np
    import torch
    if device.startswith('cuda'):
        torch.cuda.reset_peak_memory_stats()
    run, runtime = _runner(row, config, checkpoint, graph, shape, device, cfg_options, image)
    first = run()
    for _ in range(max(warmup - 1, 0)):
        run()
    ms = []
    for _ in range(iters):
        start = time.perf_counter()
        run()
        ms.append((time.perf_counter() - start) * 1000)
    np.savez(out, boxes=first[0][0], scores=first[1][0], labels=first[2][0])
    median, p90 = _percentiles(ms)
    return dict(row=row, median_ms=median, p90_ms=p90, peak_mb=_peak_mb(device),
                iters=iters, warmup=warmup, device=device, runtime=runtime)


def measure_interleaved(requests: List[dict], rounds: int) -> dict:
    """Every row of ``requests`` opened in this process and run in turn, ``rounds`` times
    after one warm-up round: {row: median ms}. On a machine whose speed drifts (shared
    cores), rows measured one after another differ by the drift; in turn they share it."""
    import numpy as np
    runs = {}
    for req in requests:
        runs[req['row']] = _runner(req['row'], req['config'], req['checkpoint'],
                                   req['graph'], tuple(req['shape']), req['device'],
                                   req.get('cfg_options'), req.get('image'))[0]
        runs[req['row']]()
    ms = {row: [] for row in runs}
    for _ in range(rounds):
        for row, run in runs.items():
            start = time.perf_counter()
            run()
            ms[row].append((time.perf_counter() - start) * 1000)
    return {row: float(np.median(v)) for row, v in ms.items()}


def _skip_reason(row: str, calib) -> Optional[str]:
    if row == 'tensorrt-fp16':
        try:
            import tensorrt  # noqa: F401
        except ImportError:
            return 'tensorrt is not importable here: not measured'
        return ('TensorRT fp16 needs precision in the graph (TensorRT 11) and a --check of '
                'its own: not measured by this tool yet')
    if row.startswith('openvino'):
        try:
            import openvino  # noqa: F401
        except ImportError:
            return 'openvino is not installed (pip install openvino): not measured'
    if row == 'openvino-int8-fused':
        try:
            import nncf  # noqa: F401
        except ImportError:
            return 'nncf is not installed (pip install nncf): not measured'
    if row.endswith('fused'):
        from projects.dino_dinov2.deploy.openvino_ext import ExtensionError, library
        try:
            library()
        except ExtensionError as e:
            return f'{e}: not measured'
    if 'int8' in row and not calib:
        return 'needs calibration images (--calib DIR)'
    return None


def _export_graphs(rows, config, checkpoint, shape, out_dir, calib, calib_images,
                   cfg_options) -> dict:
    """The graphs the rows need, exported once; {file name: export seconds}."""
    from projects.dino_dinov2.deploy.onnx_export import export
    needed = {GRAPHS[r] for r in rows if r in GRAPHS}
    seconds = {}
    for name in sorted(needed):
        path = osp.join(out_dir, name)
        if name in ('model_int8.onnx', 'model_int8_openvino.xml'):
            from projects.dino_dinov2.deploy.calibration import calibration_images
            from projects.dino_dinov2.deploy.quantize import export_int8
            fused = name.endswith('.xml')
            info = export_int8(config, checkpoint, path,
                               calibration_images(calib, calib_images), shape,
                               cfg_options=cfg_options, log=lambda line: None,
                               deform_attn='openvino' if fused else 'onnx',
                               backend='openvino' if fused else 'onnxruntime')
            seconds[name] = info.get('seconds')
        else:
            form = {'model_gridsample.onnx': 'pytorch',
                    'model_openvino.onnx': 'openvino'}.get(name, 'onnx')
            seconds[name] = export(config, checkpoint, path, shape, cfg_options=cfg_options,
                                   deform_attn=form)['seconds']
    return seconds


def _child(request: dict, path: str):
    return subprocess.run([sys.executable, '-m', __name__, json.dumps(request)],
                          capture_output=True, text=True,
                          env=dict(os.environ, PYTHONPATH=path))


def agreement(row: dict, reference: str, candidate: str) -> dict:
    """``row`` with the share of its top K that agree with the reference row."""
    import numpy as np

    from projects.dino_dinov2.deploy.onnx_export import compare_detections
    ref, got = np.load(reference), np.load(candidate)
    loose = row['row'].endswith(('int8', 'bf16', 'bf16-fused', 'int8-fused'))
    box_tol, score_tol, _ = LOOSE_TOL if loose else FLOAT_TOL
    result = compare_detections([got['boxes'], got['scores'], got['labels']],
                                [ref['boxes'], ref['scores'], ref['labels']],
                                score_tol, box_tol)
    return dict(row, agree=result['labels'], agree_tol=f'{box_tol} px, {score_tol}',
                max_box_diff=result['boxes'], max_score_diff=result['scores'])


def run(config: str, checkpoint: str, shape=(512, 512), iters: int = 10, warmup: int = 3,
        out_dir: str = 'work_dirs/benchmark_inference', device: Optional[str] = None,
        rows=ROWS, cfg_options: Optional[dict] = None, calib: Optional[str] = None,
        calib_images: int = 300, image: Optional[str] = None,
        interleave: int = 0) -> List[dict]:
    """Export the graphs the rows need, then every row in its own process, then (with
    ``interleave`` rounds) every measured row again in turn in one process
    (``interleaved_ms``); returns the rows."""
    import torch
    device = device or ('cuda' if torch.cuda.is_available() else 'cpu')
    os.makedirs(out_dir, exist_ok=True)
    unknown = [r for r in rows if r not in ROWS + OPTIONAL_ROWS]
    if unknown:
        raise ValueError(f'unknown rows {unknown}: {ROWS + OPTIONAL_ROWS}')
    skipped = {r: _skip_reason(r, calib) for r in rows}
    runnable = [r for r in rows if skipped[r] is None]
    exported = _export_graphs(runnable, config, checkpoint, shape, out_dir, calib,
                              calib_images, cfg_options)
    tools = osp.dirname(osp.dirname(osp.abspath(__file__)))
    path = os.pathsep.join([osp.dirname(tools), tools, os.environ.get('PYTHONPATH', '')])
    results, requests = [], []
    for row in rows:
        if skipped[row]:
            results.append(dict(row=row, skipped=skipped[row]))
            continue
        graph = osp.join(out_dir, GRAPHS[row]) if row in GRAPHS else None
        request = dict(row=row, config=config, checkpoint=checkpoint, graph=graph,
                       shape=list(shape), iters=iters, warmup=warmup, device=device,
                       out=osp.join(out_dir, f'{row}.npz'), cfg_options=cfg_options,
                       image=image)
        proc = _child(request, path)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith('{')]
        if proc.returncode != 0 or not lines:
            tail = (proc.stderr.strip().splitlines() or ['?'])[-1]
            results.append(dict(row=row, skipped=f'failed: {tail[:200]}'))
            continue
        result = json.loads(lines[-1])
        if graph:
            result['export_seconds'] = exported.get(GRAPHS[row])
        results.append(result)
        requests.append(request)
    if interleave and requests:
        proc = _child(dict(interleave=interleave, requests=requests), path)
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith('{')]
        if proc.returncode != 0 or not lines:
            tail = (proc.stderr.strip().splitlines() or ['?'])[-1]
            raise RuntimeError(f'the interleaved rows failed: {tail[:200]}')
        medians = json.loads(lines[-1])
        results = [dict(r, interleaved_ms=medians[r['row']]) if r['row'] in medians else r
                   for r in results]
    reference = osp.join(out_dir, 'pytorch-fp32.npz')
    if osp.isfile(reference) and any(r['row'] == 'pytorch-fp32' and 'median_ms' in r
                                     for r in results):
        results = [agreement(r, reference, osp.join(out_dir, f'{r["row"]}.npz'))
                   if 'median_ms' in r and r['row'] != 'pytorch-fp32' else r
                   for r in results]
    with open(osp.join(out_dir, 'inference.json'), 'w') as f:
        json.dump(results, f, indent=1)
    return results


def table(results: List[dict], title: str = '') -> str:
    """The rows as markdown. With interleaved medians the ratios are theirs (the rows
    measured in turn share the machine's drift) and a column shows them."""
    turn = any('interleaved_ms' in r for r in results)
    key = 'interleaved_ms' if turn else 'median_ms'
    base = {r['row']: r[key] for r in results if key in r}
    ref_ms = base.get('pytorch-fp32')
    ort_ms = base.get('onnxruntime-gridsample')
    cols = ['runtime', 'median (ms)', 'p90 (ms)'] + (['in turn (ms)'] if turn else []) + [
        'vs PyTorch float32', "vs today's graph (onnxruntime, GridSample stacked)",
        'agreement with PyTorch (top K; box px, score)', 'peak memory (MiB)']
    lines = ([title, ''] if title else []) + [
        '| ' + ' | '.join(cols) + ' |',
        '| --- | ' + ' | '.join('---' if c.startswith('agree') else '---:'
                                for c in cols[1:]) + ' |']
    for r in results:
        name = r['row'] + (f' ({r["runtime"]})' if r.get('runtime') else '')
        if 'median_ms' not in r:
            lines.append('| ' + ' | '.join([name] + ['-'] * (len(cols) - 2) + [r['skipped']])
                         + ' |')
            continue
        ms = r.get(key)
        ratio = f'{ref_ms / ms:.2f}x' if ref_ms and ms else '-'
        vs_ort = f'{ort_ms / ms:.2f}x' if ort_ms and ms else '-'
        agree = (f'{100 * r["agree"]:.1f}% (within {r["agree_tol"]}; largest '
                 f'{r["max_box_diff"]:.1e} px, {r["max_score_diff"]:.1e})'
                 if 'agree' in r else 'reference')
        cells = [name, f'{r["median_ms"]:.1f}', f'{r["p90_ms"]:.1f}']
        if turn:
            cells.append(f'{ms:.1f}' if ms else '-')
        cells += [ratio, vs_ort, agree, f'{r["peak_mb"]:.0f}']
        lines.append('| ' + ' | '.join(cells) + ' |')
    return '\n'.join(lines)


if __name__ == '__main__':
    req = json.loads(sys.argv[1])
    if 'interleave' in req:
        print(json.dumps(measure_interleaved(req['requests'], req['interleave'])))
        sys.exit(0)
    print(json.dumps(measure_row(req['row'], req['config'], req['checkpoint'],
                                 req['graph'], tuple(req['shape']), req['iters'],
                                 req['warmup'], req['device'], req['out'],
                                 req.get('cfg_options'), req.get('image'))))
