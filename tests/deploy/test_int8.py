"""INT8 export (tools/export.py --int8): calibration on the user's images, what is kept
in float, the accuracy gate, the INT8 graph in both runtimes through tools/test.py, and the
bad inputs. Real onnxruntime quantizer and OpenVINO, the 2-epoch synthetic detector."""
import os
import os.path as osp

import numpy as np
import pytest
from PIL import Image

from helpers import (SYNTHETIC_CONFIG, captured_log, data_cfg_options, gated_int8_export,
                     load_tool, run_export)
from projects.dino_dinov2 import deploy
from projects.dino_dinov2.deploy import calibration, quantize


@pytest.fixture(scope='module')
def int8_export(synthetic_run, synthetic_data, tmp_path_factory):
    """The 2-epoch synthetic detector in INT8, calibrated on its 16 training images (the
    dataset root), gated on its val split."""
    return gated_int8_export(synthetic_run, synthetic_data,
                             str(tmp_path_factory.mktemp('int8') / 'model_int8.onnx'),
                             '--calib-images', '32')


def test_int8_graph_sidecar_and_what_stays_float(int8_export):
    import onnx
    _, out, log = int8_export
    # 16 images found, 32 asked, fewer than 100: both said
    assert 'fewer than the 32 asked' in log and 'fewer than 100' in log
    info = deploy.read_sidecar(out)
    int8 = info['int8']
    assert int8['calibration_images'] == 16 and int8['format'] == 'QDQ'
    gate = int8['gate']
    assert gate['float32_map'] - gate['int8_map'] <= 0.05 and gate['max_drop'] == 0.05
    graph = onnx.load(out)
    producers = {o: n for n in graph.graph.node for o in n.output}

    def quantized(node):  # a QDQ product: its inputs come from DequantizeLinear
        return all(producers.get(i) is not None and producers[i].op_type ==
                   'DequantizeLinear' for i in node.input[:2])
    products = [n for n in graph.graph.node if n.op_type in ('MatMul', 'Gemm')]
    done = {n.name for n in products if quantized(n)}
    assert int8['quantized'] == len(done) > 20
    for node in products:
        final = 'cls_branches' in node.name or (
            'reg_branches' in node.name and node.name in quantize._last_box_layers(
                n.name for n in products))
        attention = 'attn/MatMul' in node.name and 'qkv' not in node.name
        if final or (attention and '/backbone/' in node.name):
            assert node.name not in done, node.name
    ops = {n.op_type for n in graph.graph.node}
    assert {'QuantizeLinear', 'DequantizeLinear', 'GridSample', 'Softmax'} <= ops
    for node in graph.graph.node:  # Softmax, LayerNorm, GridSample take float inputs
        if node.op_type in ('Softmax', 'LayerNormalization', 'GridSample'):
            assert producers[node.input[0]].op_type != 'DequantizeLinear', node.name


def test_int8_in_both_runtimes_through_tools_test(int8_export, synthetic_data, tmp_path,
                                                  monkeypatch):
    """tools/test.py evaluates the INT8 graph in onnxruntime and in OpenVINO: the same AP
    within rounding, that of the gate."""
    ckpt, out, _ = int8_export
    gate = deploy.read_sidecar(out)['int8']['gate']
    monkeypatch.setenv('LOCAL_RANK', '0')
    maps = {}
    for backend in ('onnxruntime', 'openvino'):
        metrics = load_tool('test').main([
            SYNTHETIC_CONFIG, ckpt, '--work-dir', str(tmp_path / backend), '--backend',
            backend, '--onnx', out, '--cfg-options', *data_cfg_options(synthetic_data)])
        maps[backend] = metrics['coco/bbox_mAP']
    assert abs(maps['onnxruntime'] - gate['int8_map']) <= 1e-3, (maps, gate)
    assert abs(maps['openvino'] - maps['onnxruntime']) <= 0.02, maps


def test_gate_refuses_a_bad_setting(int8_export, synthetic_data, tmp_path, capsys):
    """Everything quantized (per-tensor) on one blank calibration image: the gate prints
    both APs, exits 1 and writes nothing."""
    ckpt, _, _ = int8_export
    blank = tmp_path / 'calib'
    blank.mkdir()
    Image.new('RGB', (128, 128), (0, 0, 0)).save(blank / 'black.png')
    out = tmp_path / 'out' / 'bad_int8.onnx'
    printed = run_export([SYNTHETIC_CONFIG, ckpt, '--out', str(out), '--shape', '128x128',
                          '--int8', '--calib', str(blank), '--int8-scope', 'everything',
                          '--max-drop', '0.01', '--val', synthetic_data], capsys, code=1)
    line = [ln for ln in printed.out.splitlines() if ln.startswith('gate: float32')][-1]
    float_map, int8_map = (float(v.strip(',')) for v in line.split()[4:7:2])
    assert float_map - int8_map > 0.01, line
    assert 'more than --max-drop 0.01' in printed.err and 'not written' in printed.err
    assert not out.exists() and os.listdir(out.parent) == []  # nothing half-written


def test_check_of_the_int8_graph(int8_export, synthetic_data, capsys):
    """--check compares the INT8 graph with PyTorch at INT8's tolerances."""
    ckpt, out, _ = int8_export
    image = osp.join(synthetic_data, 'val', sorted(os.listdir(osp.join(synthetic_data,
                                                                       'val')))[0])
    rows, ok = deploy.check(SYNTHETIC_CONFIG, ckpt, out, [image], box_tol=2.0,
                            score_tol=0.05, min_agreement=0.5)
    assert ok and rows[0]['labels'] >= 0.5, rows
    rows, _ = deploy.check(SYNTHETIC_CONFIG, ckpt, out, [image], backend='openvino')
    assert rows[0]['labels'] < 1.0  # at float32's tolerances INT8 is not float32


@pytest.mark.parametrize('case', ['missing', 'empty', 'unreadable', 'a file'])
def test_bad_calibration_sources(case, int8_export, tmp_path, capsys):
    ckpt, _, _ = int8_export
    source = tmp_path / 'calib'
    if case != 'missing':
        source.mkdir()
    if case == 'unreadable':
        for i in range(3):
            (source / f'{i}.jpg').write_bytes(b'not an image')
    if case == 'a file':
        source = tmp_path / 'calib.txt'
        source.write_text('x')
    out = tmp_path / 'out' / 'x.onnx'
    err = run_export([SYNTHETIC_CONFIG, ckpt, '--out', str(out), '--int8', '--calib',
                      str(source)], capsys, code=2).err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith('error: --calib') and str(source) in err[0]
    expected = {'missing': 'not found', 'empty': 'no images', 'unreadable': 'can be read',
                'a file': 'a file'}[case]
    assert expected in err[0], err
    assert not (tmp_path / 'out').exists()  # known before the export starts


def test_calibration_skips_unreadable_and_spreads_the_choice(tmp_path):
    for i in range(10):
        Image.new('RGB', (8, 8), (i, i, i)).save(tmp_path / f'{i:02d}.png')
    (tmp_path / 'sub').mkdir()
    Image.new('RGB', (8, 8)).save(tmp_path / 'sub' / 'x.jpg')
    (tmp_path / '04.png').write_bytes(b'broken')  # one of the five chosen
    with captured_log() as log:
        chosen = calibration.calibration_images(str(tmp_path), 5)
    assert any("skipped 1 unreadable" in m and "04.png" in m for m in log)
    assert len(chosen) == 4 and all(osp.isfile(p) for p in chosen)
    assert calibration.choose(list(range(10)), 5) == [0, 2, 4, 6, 8]
    batches = list(calibration.letterboxed(chosen[:2], 64, 64, [1, 2, 3], batch=2))
    assert batches[0].shape == (2, 3, 64, 64) and batches[0].dtype == np.float32


@pytest.mark.parametrize('argv, message', [
    (['--int8'], '--int8 needs --calib'),
    (['--calib', 'x'], '--calib is an INT8 setting'),
    (['--int8', '--calib', 'x', '--val', 'y'], '--val goes with --max-drop'),
    (['--int8', '--calib', 'x', '--dynamic-batch'], 'drop --dynamic-batch'),
])
def test_flag_errors(argv, message, int8_export, tmp_path, capsys):
    ckpt, _, _ = int8_export
    err = run_export([SYNTHETIC_CONFIG, ckpt, '--out', str(tmp_path / 'x.onnx'), *argv],
                     capsys, code=2).err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_missing_runtimes_one_line(int8_export, synthetic_data, tmp_path, capsys,
                                   monkeypatch):
    import sys
    ckpt, out, _ = int8_export
    monkeypatch.setitem(sys.modules, 'onnxruntime', None)  # import fails as if missing
    err = run_export([SYNTHETIC_CONFIG, ckpt, '--out', str(tmp_path / 'x.onnx'), '--int8',
                      '--calib', synthetic_data], capsys, code=2).err.strip().splitlines()
    assert len(err) == 1 and 'onnxruntime is not installed' in err[0]
    monkeypatch.setitem(sys.modules, 'openvino', None)
    with pytest.raises(deploy.ExportError, match='openvino is not installed'):
        deploy.Detector.from_openvino(out)
    assert os.listdir(tmp_path) == []


def test_plan_reads_the_graph():
    """The default plan on a hand-built graph: the weight product quantized; the
    attention product, the product after a Softmax and the final layers kept float."""
    from onnx import TensorProto, helper, numpy_helper
    w = numpy_helper.from_array(np.ones((4, 4), np.float32), 'w')
    nodes = [
        helper.make_node('MatMul', ['x', 'w'], ['a'], name='/encoder/layers.0/ffn/MatMul'),
        helper.make_node('MatMul', ['a', 'a'], ['s'], name='/backbone/blocks.0/attn/MatMul'),
        helper.make_node('Softmax', ['s'], ['p'], name='softmax'),
        helper.make_node('MatMul', ['p', 'w'], ['v'], name='/decoder/layers.0/attn/MatMul_4'),
        helper.make_node('MatMul', ['v', 'w'], ['c'], name='/bbox_head/cls_branches.5/MatMul'),
        helper.make_node('MatMul', ['v', 'w'], ['r0'], name='/reg_branches.5/reg_branches.5.0/M'),
        helper.make_node('MatMul', ['r0', 'w'], ['r4'], name='/reg_branches.5/reg_branches.5.4/M'),
    ]
    graph = helper.make_graph(nodes, 'g', [helper.make_tensor_value_info(
        'x', TensorProto.FLOAT, [4, 4])], [helper.make_tensor_value_info(
            'r4', TensorProto.FLOAT, [4, 4])], [w])
    model = helper.make_model(graph)
    todo, kept = quantize.plan(model)
    assert todo == ['/encoder/layers.0/ffn/MatMul', '/reg_branches.5/reg_branches.5.0/M']
    assert kept == {'/backbone/blocks.0/attn/MatMul': 'attention product (two activations)',
                    '/decoder/layers.0/attn/MatMul_4': 'attention-value product',
                    '/bbox_head/cls_branches.5/MatMul': 'final class layer',
                    '/reg_branches.5/reg_branches.5.4/M': 'final box layer'}
    assert len(quantize.plan(model, 'products')[0]) == 6 and not quantize.plan(
        model, 'products')[1]
    with pytest.raises(quantize.QuantizationError, match='--int8-scope'):
        quantize.plan(model, 'some')


def test_per_layer_error_tool(synthetic_run, synthetic_data, tmp_path, capsys):
    """tools/analysis_tools/int8_layer_error.py: every product's own and arrived INT8 error
    (SQNR) on images other than the calibration ones, by kind, and at the outputs."""
    import json

    from analysis_tools import int8_layer_error as tool
    out_dir = str(tmp_path / 'err')
    assert tool.main([SYNTHETIC_CONFIG, osp.join(synthetic_run, 'epoch_2.pth'), '--calib',
                      synthetic_data, '--shape', '128x128', '--calib-images', '8',
                      '--images', '2', '--out-dir', out_dir]) == 0
    result = json.load(open(osp.join(out_dir, 'int8_layer_error.json')))
    kinds = {r['kind'] for r in result['rows']}
    assert {'attention product', 'final class layer', 'final box layer',
            'learned-weight product'} <= kinds
    for r in result['rows']:
        assert 5 < r['own_db'] < 200, r  # a quantized product: noise, but not noise only
        assert r['arrived_db'] <= r['own_db'] + 30
    assert set(result['outputs']) == {'scores', 'boxes'}
    assert result['images'] == 2 and result['calibration_images'] == 8
    assert '| attention product |' in capsys.readouterr().out


def test_the_gate_on_the_first_images_is_the_ap_of_those_images(int8_export, synthetic_data,
                                                                 tmp_path):
    """--val-images N: the AP of N images (it counted every other image's boxes as missed:
    0.18 for images that score 0.87)."""
    import json
    import shutil

    from projects.dino_dinov2 import deploy
    from projects.dino_dinov2.deploy.runtime import evaluate_graph
    _, out, _ = int8_export
    info = deploy.read_sidecar(out)
    first = evaluate_graph(SYNTHETIC_CONFIG, out, info, str(tmp_path / 'first'),
                           val=synthetic_data, val_images=3)
    # the same 3 images as a dataset of their own
    own = tmp_path / 'three'
    own.mkdir()
    data = json.load(open(osp.join(synthetic_data, 'annotations', 'instances_val.json')))
    data['images'] = data['images'][:3]
    ids = {img['id'] for img in data['images']}
    data['annotations'] = [a for a in data['annotations'] if a['image_id'] in ids]
    for img in data['images']:
        shutil.copy(osp.join(synthetic_data, 'val', img['file_name']), own)
    json.dump(data, open(own / 'annotations.json', 'w'))
    alone = evaluate_graph(SYNTHETIC_CONFIG, out, info, str(tmp_path / 'alone'), val=str(own))
    whole = evaluate_graph(SYNTHETIC_CONFIG, out, info, str(tmp_path / 'whole'),
                           val=synthetic_data)
    key = next(k for k in first if k.endswith('bbox_mAP'))
    assert first[key] == alone[key]
    assert first != whole  # not the whole file's
