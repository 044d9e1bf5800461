#!/usr/bin/env python
"""Per-layer INT8 error of an exported detector: which products INT8 can take.

    python tools/analysis_tools/int8_layer_error.py CONFIG CHECKPOINT --calib DIR
        [--shape 512x512] [--calib-images 100] [--images 8] [--out-dir DIR]

Quantizes every MatMul/Gemm (``--int8-scope products``) on the calibration images, then,
on ``--images`` other images of the same source, runs the float32 graph and reads each
product's inputs and output. For each product:

- **own error**: its output computed from the float32 inputs fake-quantized with the
  scales the quantizer chose (activations uint8 per tensor, weights int8 per channel)
  against its float32 output, as a signal-to-quantization-noise ratio (SQNR, dB: higher
  is better; 6 dB per bit);
- **arrived error**: the SQNR of its output in the all-INT8 graph against float32 (what
  every quantized product before it added).

It prints the products by own error (worst first), grouped by kind (attention products,
final class and box layers, the rest), and the arrived error at the graph's outputs
(scores and boxes), and writes ``int8_layer_error.json``. docs/deploy.md gives the
measured table that set the default exclusions of ``tools/export.py --int8``.
"""
import argparse
import json
import os
import os.path as osp
import sys
import tempfile
from collections import defaultdict

import numpy as np

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))


def sqnr(ref: np.ndarray, got: np.ndarray) -> float:
    noise = float(np.sum((ref.astype(np.float64) - got) ** 2))
    signal = float(np.sum(ref.astype(np.float64) ** 2))
    return float('inf') if noise == 0 else 10 * np.log10(max(signal, 1e-30) / noise)


def kind(name: str, kept: dict) -> str:
    why = kept.get(name, '')
    if 'attention' in why:
        return 'attention product'
    if why.startswith('final'):
        return why
    return 'learned-weight product'


def _initializers(model):
    from onnx import numpy_helper
    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}


def _with_outputs(model, names, path: str) -> str:
    """``model`` saved at ``path`` with the tensors ``names`` as extra graph outputs."""
    import onnx
    existing = {o.name for o in model.graph.output}
    for name in names:
        if name not in existing:
            model.graph.output.append(onnx.ValueInfoProto(name=name))
    onnx.save(model, path)
    return path


def product_quantization(qdq_model):
    """{product name: (A tensor (float name), A scale, A zero point, dequantized B)}."""
    inits = _initializers(qdq_model)
    producers = {o: n for n in qdq_model.graph.node for o in n.output}
    found = {}
    for node in qdq_model.graph.node:
        if node.op_type not in ('MatMul', 'Gemm'):
            continue
        dq_a, dq_b = (producers.get(i) for i in node.input[:2])
        if dq_a is None or dq_a.op_type != 'DequantizeLinear' or dq_b is None or \
                dq_b.op_type != 'DequantizeLinear':
            continue
        q_a = producers.get(dq_a.input[0])
        if q_a is None or q_a.op_type != 'QuantizeLinear':
            continue
        b_q = inits.get(dq_b.input[0])
        if b_q is None:  # both inputs activations: an attention product
            q_b = producers.get(dq_b.input[0])
            b = ('activation', q_b.input[0], inits[dq_b.input[1]], inits[dq_b.input[2]])
        else:
            scale, zero = inits[dq_b.input[1]], inits[dq_b.input[2]]
            axis = next((a.i for a in dq_b.attribute if a.name == 'axis'), 1)
            shape = [1] * b_q.ndim
            if scale.ndim:
                shape[axis] = -1
            b = ('weight', (b_q.astype(np.float32) - zero.reshape(shape)) * scale.reshape(shape))
        found[node.name] = dict(a=q_a.input[0], a_scale=inits[dq_a.input[1]],
                                a_zero=inits[dq_a.input[2]], b=b, out=node.output[0],
                                gemm=node.op_type == 'Gemm', node=node)
    return found


def fake_quant(x, scale, zero, qmin=0, qmax=255):
    return (np.clip(np.round(x / scale) + zero, qmin, qmax) - zero) * scale


def product(a, b, node, bias=None):
    """``a @ b`` as the node computes it (Gemm's transB and bias)."""
    attrs = {x.name: x.i for x in node.attribute if x.type == x.INT}
    y = a @ (b.T if attrs.get('transB') else b)
    return y if bias is None else y + bias


def run(config, checkpoint, calib, shape, calib_images, images, out_dir):
    import onnx
    import onnxruntime as ort

    from projects.dino_dinov2.deploy.calibration import (_source_images, calibration_images,
                                                         letterboxed)
    from projects.dino_dinov2.deploy.onnx_export import export
    from projects.dino_dinov2.deploy.quantize import plan, quantize
    os.makedirs(out_dir, exist_ok=True)
    float_path = osp.join(out_dir, 'float32.onnx')
    info = export(config, checkpoint, float_path, shape)
    h, w = info['input']['shape'][2:]
    pad = info['preprocess']['pad_value']
    calib_set = calibration_images(calib, calib_images)
    rest = [p for p in _source_images(calib) if p not in set(calib_set)]
    eval_set = (rest or calib_set)[:images]
    qdq_path = osp.join(out_dir, 'int8_products.onnx')
    quantize(float_path, qdq_path, lambda: letterboxed(calib_set, h, w, pad), 'products')
    from onnxruntime.quantization.shape_inference import quant_pre_process
    with tempfile.TemporaryDirectory() as tmp:
        pre = osp.join(tmp, 'pre.onnx')
        quant_pre_process(float_path, pre, skip_symbolic_shape=True)
        pre_model = onnx.load(pre)
        _, kept = plan(pre_model, 'default')
        float_nodes = {n.name: n for n in pre_model.graph.node}
        inits = _initializers(pre_model)
        qdq = onnx.load(qdq_path)
        products = product_quantization(qdq)
        wanted = sorted({p['a'] for p in products.values()} | {p['out'] for p in
                         products.values()} | {p['b'][1] for p in products.values()
                                               if p['b'][0] == 'activation'})
        float_aug = _with_outputs(pre_model, wanted, osp.join(tmp, 'float_aug.onnx'))
        qdq_aug = _with_outputs(qdq, [p['out'] for p in products.values()],
                                osp.join(tmp, 'qdq_aug.onnx'))
        s_float = ort.InferenceSession(float_aug, providers=['CPUExecutionProvider'])
        s_qdq = ort.InferenceSession(qdq_aug, providers=['CPUExecutionProvider'])
        own, arrived, final = defaultdict(list), defaultdict(list), defaultdict(list)
        names_f = [o.name for o in s_float.get_outputs()]
        names_q = [o.name for o in s_qdq.get_outputs()]
        for x in letterboxed(eval_set, h, w, pad):
            f = dict(zip(names_f, s_float.run(None, {'images': x})))
            q = dict(zip(names_q, s_qdq.run(None, {'images': x})))
            for name, p in products.items():
                node = float_nodes[name]
                a = fake_quant(f[p['a']], p['a_scale'], p['a_zero'])
                if p['b'][0] == 'weight':
                    b = p['b'][1]
                else:
                    b = fake_quant(f[p['b'][1]], p['b'][2], p['b'][3])
                bias = inits.get(node.input[2]) if len(node.input) > 2 else None
                ref = f[p['out']]
                own[name].append(sqnr(ref, product(a, b, node, bias)))
                arrived[name].append(sqnr(ref, q[p['out']]))
            for out in ('scores', 'boxes'):
                final[out].append(sqnr(f[out], q[out]))
    rows = [dict(product=n, kind=kind(n, kept), own_db=float(np.mean(own[n])),
                 arrived_db=float(np.mean(arrived[n]))) for n in products]
    rows.sort(key=lambda r: r['own_db'])
    result = dict(rows=rows, outputs={k: float(np.mean(v)) for k, v in final.items()},
                  images=len(eval_set), calibration_images=len(calib_set))
    with open(osp.join(out_dir, 'int8_layer_error.json'), 'w') as fh:
        json.dump(result, fh, indent=1)
    return result


def report(result, top: int = 25) -> str:
    by_kind = defaultdict(list)
    for r in result['rows']:
        by_kind[r['kind']].append(r['own_db'])
    lines = [f'INT8 per-layer error, {result["images"]} images (calibrated on '
             f'{result["calibration_images"]}); SQNR in dB, higher is better', '',
             '| kind | products | own error: median | worst |', '| --- | ---: | ---: | ---: |']
    for k, v in sorted(by_kind.items()):
        lines.append(f'| {k} | {len(v)} | {np.median(v):.1f} | {min(v):.1f} |')
    lines += ['', f'worst {top} by own error:', '', '| product | kind | own | arrived |',
              '| --- | --- | ---: | ---: |']
    for r in result['rows'][:top]:
        lines.append(f'| {r["product"]} | {r["kind"]} | {r["own_db"]:.1f} | '
                     f'{r["arrived_db"]:.1f} |')
    lines += ['', 'every product in INT8: ' + ', '.join(
        f'{k} {v:.1f} dB' for k, v in result['outputs'].items()) + ' at the outputs']
    return '\n'.join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n', 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config')
    parser.add_argument('checkpoint')
    parser.add_argument('--calib', required=True, help='a folder of images or a dataset root')
    parser.add_argument('--shape', default='512x512')
    parser.add_argument('--calib-images', type=int, default=100)
    parser.add_argument('--images', type=int, default=8,
                        help='images (not among the calibration ones) the errors are read on')
    parser.add_argument('--out-dir', default='work_dirs/int8_layer_error')
    args = parser.parse_args(argv)
    from projects.dino_dinov2.deploy import parse_shape
    result = run(args.config, args.checkpoint, args.calib, parse_shape(args.shape),
                 args.calib_images, args.images, args.out_dir)
    text = report(result)
    with open(osp.join(args.out_dir, 'int8_layer_error.md'), 'w') as fh:
        fh.write(text + '\n')
    print(text)
    return 0


if __name__ == '__main__':
    sys.exit(main())
