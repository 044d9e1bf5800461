"""INT8 in OpenVINO (tools/export.py --int8 --backend openvino): NNCF's quantization of
the graph with the fused deformable sampling, written as OpenVINO IR; what stays float, the
gate in OpenVINO, tools/test.py and --check on the IR, and the bad inputs. Real NNCF and
OpenVINO, the project's extension, the 2-epoch synthetic detector."""
import os
import os.path as osp

import numpy as np
import pytest
from PIL import Image

from helpers import (SYNTHETIC_CONFIG, data_cfg_options, gated_int8_export, load_tool,
                     run_export)
from projects.dino_dinov2 import deploy
from projects.dino_dinov2.deploy import nncf_quantize, quantize


@pytest.fixture(scope='module')
def ov_int8_export(synthetic_run, synthetic_data, tmp_path_factory):
    """The 2-epoch synthetic detector, its fused graph in INT8 by NNCF, calibrated on its
    16 training images, gated in OpenVINO on its val split."""
    return gated_int8_export(synthetic_run, synthetic_data,
                             str(tmp_path_factory.mktemp('ov_int8') / 'model_int8.xml'),
                             '--calib-images', '16', '--backend', 'openvino',
                             '--deform-attn', 'openvino')


def _matmuls(path):
    from projects.dino_dinov2.deploy.openvino_ext import shared_core
    model = shared_core(extension=True).read_model(path)
    ops = model.get_ordered_ops()
    return ops, [op for op in ops if op.get_type_name() == 'MatMul']


def test_ir_sidecar_fused_nodes_and_what_stays_float(ov_int8_export):
    _, out, log = ov_int8_export
    assert osp.isfile(out) and osp.isfile(out[:-4] + '.bin')
    assert 'calibration: only 16 images' in log
    info = deploy.read_sidecar(out)
    int8 = info['int8']
    assert int8['format'].startswith('OpenVINO IR') and int8['quantizer'].startswith('nncf')
    assert info['export']['deform_attn'] == 'openvino' and int8['calibration_images'] == 16
    assert 'attention products (two activations)' in int8['kept_float']
    assert 'final class layers' in int8['kept_float'] and 'final box layers' in int8['kept_float']
    gate = int8['gate']
    assert gate['backend'] == 'openvino' and gate['float32_map'] - gate['int8_map'] <= 0.05
    ops, matmuls = _matmuls(out)
    assert sum(op.get_type_name() == 'MSDeformAttn' for op in ops) == 4  # kept fused
    assert not [op for op in ops if op.get_type_name() == 'GridSample']

    def quantized(op):  # NNCF puts a FakeQuantize on the activation a product reads
        return op.input(0).get_source_output().get_node().get_type_name() == 'FakeQuantize'
    done = {op.get_friendly_name() for op in matmuls if quantized(op)}
    assert int8['quantized'] == len(done) > 20, (int8, len(done))
    names = [op.get_friendly_name() for op in matmuls]
    for name in names:
        final = 'cls_branches' in name or name in quantize._last_box_layers(names)
        attention = 'attn/MatMul' in name and 'qkv' not in name
        if final or (attention and '/backbone/' in name):
            assert name not in done, name
    for op in ops:  # LayerNorm (MVN), Softmax, the fused sampling read float
        if op.get_type_name() in ('MVN', 'Softmax', 'MSDeformAttn'):
            assert op.input(0).get_source_output().get_node().get_type_name() != \
                'FakeQuantize', op.get_friendly_name()


def test_ir_through_tools_test_and_check(ov_int8_export, synthetic_data, tmp_path,
                                         monkeypatch):
    """tools/test.py evaluates the IR in OpenVINO (the gate's AP); --check compares it with
    PyTorch at INT8's tolerances; onnxruntime refuses it in one line."""
    ckpt, out, _ = ov_int8_export
    gate = deploy.read_sidecar(out)['int8']['gate']
    monkeypatch.setenv('LOCAL_RANK', '0')
    metrics = load_tool('test').main([
        SYNTHETIC_CONFIG, ckpt, '--work-dir', str(tmp_path / 'ov'), '--backend', 'openvino',
        '--onnx', out, '--cfg-options', *data_cfg_options(synthetic_data)])
    assert abs(metrics['coco/bbox_mAP'] - gate['int8_map']) <= 1e-3, (metrics, gate)
    image = osp.join(synthetic_data, 'val', '000000.png')
    rows, ok = deploy.check(SYNTHETIC_CONFIG, ckpt, out, [image], box_tol=2.0,
                            score_tol=0.05, min_agreement=0.5, backend='openvino')
    assert ok and rows[0]['labels'] >= 0.5, rows
    with pytest.raises(deploy.ExportError, match='OpenVINO IR.*--backend openvino'):
        deploy.Detector.from_onnx(out)
    detector = deploy.Detector.from_openvino(out)
    assert 'fused deformable sampling' in detector.session.describe()
    with pytest.raises(deploy.ExportError, match='OpenVINO IR not found'):
        deploy.open_graph(str(tmp_path / 'none.xml'), 'openvino')


def test_gate_refuses_everything_on_a_black_image(ov_int8_export, synthetic_data, tmp_path,
                                                  capsys):
    ckpt, _, _ = ov_int8_export
    blank = tmp_path / 'calib'
    blank.mkdir()
    Image.new('RGB', (128, 128), (0, 0, 0)).save(blank / 'black.png')
    out = tmp_path / 'out' / 'bad_int8.xml'
    printed = run_export([SYNTHETIC_CONFIG, ckpt, '--out', str(out), '--shape', '128x128',
                          '--int8', '--calib', str(blank), '--int8-scope', 'everything',
                          '--backend', 'openvino', '--deform-attn', 'openvino',
                          '--max-drop', '0.01', '--val', synthetic_data], capsys, code=1)
    line = [ln for ln in printed.out.splitlines() if ln.startswith('gate: float32')][-1]
    float_map, int8_map = (float(v.strip(',')) for v in line.split()[4:7:2])
    assert float_map - int8_map > 0.01, line
    assert 'more than --max-drop 0.01' in printed.err and 'not written' in printed.err
    assert os.listdir(out.parent) == []  # neither the .xml nor the .bin


@pytest.mark.parametrize('argv, message', [
    (['--out', 'x.onnx', '--int8', '--calib', 'D', '--deform-attn', 'openvino'],
     'add --backend openvino'),
    (['--out', 'x.onnx', '--int8', '--calib', 'D', '--backend', 'openvino'],
     'must end in .xml'),
    (['--out', 'x.xml'], 'OpenVINO IR is what --int8 --backend openvino writes'),
])
def test_flag_errors(argv, message, ov_int8_export, synthetic_data, tmp_path, capsys,
                     monkeypatch):
    ckpt, _, _ = ov_int8_export
    config = osp.abspath(SYNTHETIC_CONFIG)
    monkeypatch.chdir(tmp_path)
    argv = [synthetic_data if a == 'D' else a for a in argv]
    err = run_export([config, ckpt, '--shape', '128x128', *argv],
                     capsys, code=2).err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert os.listdir(tmp_path) == []


def test_missing_nncf_one_line(ov_int8_export, synthetic_data, tmp_path, capsys,
                               monkeypatch):
    import sys
    ckpt, _, _ = ov_int8_export
    monkeypatch.setitem(sys.modules, 'nncf', None)  # import fails as if missing
    err = run_export([SYNTHETIC_CONFIG, ckpt, '--out', str(tmp_path / 'x.xml'), '--int8',
                      '--calib', synthetic_data, '--backend', 'openvino'],
                     capsys, code=2).err.strip().splitlines()
    assert len(err) == 1 and 'nncf is not installed' in err[0], err
    assert os.listdir(tmp_path) == []


def test_products_read_from_openvino_graph():
    """The rule read from an OpenVINO graph: a learned weight through a Convert counts as
    a weight; a product of two activations, or after a Softmax, does not quantize."""
    import openvino as ov
    from openvino import opset13 as ops
    x = ops.parameter([4, 4], np.float32, name='x')
    w = ops.convert(ops.constant(np.ones((4, 4), np.float16)), np.float32)
    ffn = ops.matmul(x, w, False, False)
    ffn.set_friendly_name('/encoder/layers.0/ffn/MatMul')
    scores = ops.matmul(ffn, ffn, False, True)
    scores.set_friendly_name('/backbone/blocks.0/attn/MatMul')
    value = ops.matmul(ops.reshape(ops.softmax(scores, 1), [4, 4], False), w, False, False)
    value.set_friendly_name('/decoder/layers.0/attn/MatMul_4')
    cls = ops.matmul(value, w, False, False)
    cls.set_friendly_name('/bbox_head/cls_branches.5/MatMul')
    model = ov.Model([cls], [x])
    found = nncf_quantize.products(model)
    assert found == [('/encoder/layers.0/ffn/MatMul', True, False),
                     ('/backbone/blocks.0/attn/MatMul', False, False),
                     ('/decoder/layers.0/attn/MatMul_4', True, True),
                     ('/bbox_head/cls_branches.5/MatMul', True, False)]
    todo, kept = quantize.decide(found)
    assert todo == ['/encoder/layers.0/ffn/MatMul'] and len(kept) == 3
