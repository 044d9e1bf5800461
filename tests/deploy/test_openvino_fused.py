"""The fused deformable sampling for OpenVINO (``tools/export.py --deform-attn openvino``):
the extension built from source with the system's compiler against the installed openvino
wheel, the graph's fused nodes, its check and AP in OpenVINO, onnxruntime's refusal, the
fallback to the standard graph where the extension cannot be built, and the flag errors."""
import json
import os.path as osp

import onnx
import pytest

from helpers import (SYNTHETIC_CONFIG, captured_log, data_cfg_options, load_tool,
                     run_export)
from projects.dino_dinov2 import deploy
from projects.dino_dinov2.deploy import openvino_ext


@pytest.fixture(scope='module')
def fused_export(synthetic_run, tmp_path_factory):
    """The 2-epoch synthetic detector's checkpoint and where its fused graph goes."""
    ckpt = osp.join(synthetic_run, 'epoch_2.pth')
    out = str(tmp_path_factory.mktemp('fused') / 'model_openvino.onnx')
    return ckpt, out


def test_fused_graph_checks_and_evaluates_in_openvino(fused_export, synthetic_data, tmp_path,
                                                      monkeypatch, capsys):
    ckpt, out = fused_export
    images = [osp.join(synthetic_data, 'val', n) for n in ('000000.png', '000001.png')]
    printed = run_export([SYNTHETIC_CONFIG, ckpt, '--out', out, '--shape', '128x128',
                          '--deform-attn', 'openvino', '--check', *images, '--backend',
                          'openvino'], capsys).out
    shares = [float(line.split(': ')[1].split('%')[0]) for line in printed.splitlines()
              if '% agree;' in line]
    assert len(shares) == 2 and min(shares) >= 98, printed
    info = json.load(open(deploy.sidecar_path(out)))
    assert info['export']['deform_attn'] == 'openvino'
    graph = onnx.load(out).graph
    fused = [n for n in graph.node if n.op_type == 'MSDeformAttn']
    assert len(fused) == 4 and all(n.domain == 'dino_dinov2' for n in fused)  # 2 + 2 layers
    assert not [n for n in graph.node if n.op_type == 'GridSample']
    # onnxruntime cannot run it and says so in one line
    with pytest.raises(deploy.ExportError, match='--backend openvino'):
        deploy.open_graph(out, 'onnxruntime')
    with pytest.raises(deploy.ExportError, match='--backend openvino'):
        deploy.Detector.from_onnx(out)  # the Python API goes through the same check
    # its AP in tools/test.py equals PyTorch's (the same sampling, fused)
    monkeypatch.setenv('LOCAL_RANK', '0')
    options = ['--cfg-options', *data_cfg_options(synthetic_data)]
    test = load_tool('test')
    torch_map = test.main([SYNTHETIC_CONFIG, ckpt, '--work-dir', str(tmp_path / 'pt'),
                           *options])['coco/bbox_mAP']
    ov_map = test.main([SYNTHETIC_CONFIG, ckpt, '--work-dir', str(tmp_path / 'ov'),
                        '--backend', 'openvino', '--onnx', out, *options])['coco/bbox_mAP']
    assert torch_map > 0.02 and abs(ov_map - torch_map) <= 0.002, (ov_map, torch_map)
    session = deploy.open_graph(out, 'openvino')
    assert 'fused deformable sampling' in session.describe()


def test_falls_back_to_the_standard_graph(fused_export, tmp_path, monkeypatch, capsys):
    """No compiler here: the export says why and writes the standard graph."""
    ckpt, _ = fused_export
    monkeypatch.setattr(openvino_ext, '_build_dirs', lambda: iter([str(tmp_path / 'b')]))
    monkeypatch.setenv('CXX', str(tmp_path / 'no-such-compiler'))
    out = str(tmp_path / 'model.onnx')
    with captured_log() as log:
        run_export([SYNTHETIC_CONFIG, ckpt, '--out', out, '--shape', '128x128',
                    '--deform-attn', 'openvino'], capsys)
    assert any(m.startswith('--deform-attn openvino: ') and 'standard graph' in m
               for m in log), log
    assert json.load(open(deploy.sidecar_path(out)))['export']['deform_attn'] == 'onnx'
    assert any(n.op_type == 'GridSample' for n in onnx.load(out).graph.node)


def test_build_writes_whole_or_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(openvino_ext, '_build_dirs', lambda: iter([str(tmp_path)]))
    path = openvino_ext.build()
    assert osp.isfile(path) and path.startswith(str(tmp_path))
    import openvino as ov
    core = ov.Core()
    assert openvino_ext.add_to(core) and osp.basename(path).startswith('libdino_msda_ov')
    monkeypatch.setenv('CXX', 'false')  # a compiler that fails
    with pytest.raises(openvino_ext.ExtensionError, match='failed'):
        openvino_ext.build()
    assert [p.name for p in tmp_path.iterdir()] == [osp.basename(path)]  # no .tmp left


@pytest.mark.parametrize('argv, message', [
    (['--int8', '--calib', 'x'], 'add --backend openvino'),
    (['--check', 'x.png'], '--check needs --backend openvino'),
])
def test_flag_errors(argv, message, fused_export, tmp_path, capsys):
    ckpt, _ = fused_export
    err = run_export([SYNTHETIC_CONFIG, ckpt, '--out', str(tmp_path / 'x.onnx'), '--deform-attn',
                      'openvino', *argv], capsys, code=2).err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / 'x.onnx').exists()
