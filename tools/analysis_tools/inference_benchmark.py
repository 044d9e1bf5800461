"""Inference latency of one detector at a fixed input size, per runtime.

Rows: PyTorch eager float32, PyTorch with bfloat16 autocast, onnxruntime (CPU; CUDA
execution provider where there is a GPU), TensorRT fp16 where ``tensorrt`` is importable.
Every row runs the same graph (:class:`..deploy.ExportableDetector`: normalization,
detector, top-K post-processing) on the same random 0-255 input, batch 1; latency is the
median and 90th percentile of ``iters`` runs after ``warmup``. Each row runs in its own
process so that its peak memory is its own (the CPU's peak resident set, or CUDA's max
allocated for PyTorch on a GPU). A row that cannot run here says why instead of a number.
"""
from __future__ import annotations

import json
import os
import os.path as osp
import subprocess
import sys
import time
from typing import List, Optional, Tuple

ROWS = ('pytorch-fp32', 'pytorch-bf16', 'onnxruntime', 'tensorrt-fp16')


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


def measure_row(row: str, config: str, checkpoint: str, onnx_path: str, shape, iters: int,
                warmup: int, device: str, cfg_options: Optional[dict] = None) -> dict:
    """One row, in this process."""
    import torch
    height, width = shape
    x = torch.rand(1, 3, height, width) * 255
    if row.startswith('pytorch'):
        from projects.dino_dinov2.deploy.exportable import ExportableDetector
        from projects.dino_dinov2.deploy.onnx_export import load_model
        _, model = load_model(config, checkpoint, cfg_options)
        wrapper = ExportableDetector(model, height, width).eval().to(device)
        x = x.to(device)
        dtype = torch.bfloat16 if row == 'pytorch-bf16' else None
        if device.startswith('cuda'):
            torch.cuda.reset_peak_memory_stats()

        def run():
            with torch.no_grad(), torch.autocast(device.split(':')[0], dtype=dtype,
                                                 enabled=dtype is not None):
                out = wrapper(x)
            if device.startswith('cuda'):
                torch.cuda.synchronize()
            return out
    elif row == 'onnxruntime':
        from projects.dino_dinov2.deploy.onnx_export import onnx_session
        providers = (['CUDAExecutionProvider', 'CPUExecutionProvider']
                     if device.startswith('cuda') else ['CPUExecutionProvider'])
        session = onnx_session(onnx_path, providers)
        feed = {'images': x.numpy()}
        provider = session.get_providers()[0]

        def run():
            return session.run(None, feed)
    else:
        return dict(row=row, skipped='tensorrt is not importable here: not measured')
    for _ in range(warmup):
        run()
    ms = []
    for _ in range(iters):
        start = time.perf_counter()
        run()
        ms.append((time.perf_counter() - start) * 1000)
    median, p90 = _percentiles(ms)
    out = dict(row=row, median_ms=median, p90_ms=p90, peak_mb=_peak_mb(device),
               iters=iters, warmup=warmup, device=device)
    if row == 'onnxruntime':
        out['provider'] = provider
    return out


def run(config: str, checkpoint: str, shape=(512, 512), iters: int = 10, warmup: int = 3,
        out_dir: str = 'work_dirs/benchmark_inference', device: Optional[str] = None,
        rows=ROWS, cfg_options: Optional[dict] = None) -> List[dict]:
    """Export once, then every row in its own process; returns the rows."""
    import torch

    from projects.dino_dinov2.deploy.onnx_export import export
    device = device or ('cuda' if torch.cuda.is_available() else 'cpu')
    os.makedirs(out_dir, exist_ok=True)
    onnx_path = osp.join(out_dir, 'model.onnx')
    info = export(config, checkpoint, onnx_path, shape, cfg_options=cfg_options)
    results = []
    for row in rows:
        if row == 'tensorrt-fp16':
            try:
                import tensorrt  # noqa: F401
            except ImportError:
                results.append(dict(row=row, skipped='tensorrt is not importable here: '
                                                     'not measured'))
                continue
            results.append(dict(row=row, skipped='TensorRT fp16 needs precision in the '
                                                 'graph (TensorRT 11) and a --check of its '
                                                 'own: not measured by this tool yet'))
            continue
        request = dict(row=row, config=config, checkpoint=checkpoint, onnx_path=onnx_path,
                       shape=list(shape), iters=iters, warmup=warmup, device=device,
                       cfg_options=cfg_options)
        tools = osp.dirname(osp.dirname(osp.abspath(__file__)))
        path = os.pathsep.join([osp.dirname(tools), tools, os.environ.get('PYTHONPATH', '')])
        proc = subprocess.run([sys.executable, '-m', __name__, json.dumps(request)],
                              capture_output=True, text=True,
                              env=dict(os.environ, PYTHONPATH=path))
        lines = [ln for ln in proc.stdout.splitlines() if ln.startswith('{')]
        if proc.returncode != 0 or not lines:
            tail = (proc.stderr.strip().splitlines() or ['?'])[-1]
            results.append(dict(row=row, skipped=f'failed: {tail[:200]}'))
            continue
        results.append(json.loads(lines[-1]))
    for r in results:
        r['export_seconds'] = info['seconds']
    with open(osp.join(out_dir, 'inference.json'), 'w') as f:
        json.dump(results, f, indent=1)
    return results


def table(results: List[dict], title: str = '') -> str:
    base = next((r['median_ms'] for r in results if r['row'] == 'pytorch-fp32'
                 and 'median_ms' in r), None)
    lines = [title, '', '| runtime | median (ms) | p90 (ms) | vs PyTorch float32 | peak memory '
             '(MiB) |', '| --- | ---: | ---: | ---: | ---: |'] if title else [
        '| runtime | median (ms) | p90 (ms) | vs PyTorch float32 | peak memory (MiB) |',
        '| --- | ---: | ---: | ---: | ---: |']
    for r in results:
        name = r['row'] + (f' ({r["provider"]})' if r.get('provider') else '')
        if 'median_ms' not in r:
            lines.append(f'| {name} | - | - | - | {r["skipped"]} |')
            continue
        ratio = f'{base / r["median_ms"]:.2f}x' if base else '-'
        lines.append(f'| {name} | {r["median_ms"]:.1f} | {r["p90_ms"]:.1f} | {ratio} | '
                     f'{r["peak_mb"]:.0f} |')
    return '\n'.join(lines)


if __name__ == '__main__':
    req = json.loads(sys.argv[1])
    print(json.dumps(measure_row(req['row'], req['config'], req['checkpoint'],
                                 req['onnx_path'], tuple(req['shape']), req['iters'],
                                 req['warmup'], req['device'], req.get('cfg_options'))))
