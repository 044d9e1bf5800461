"""ONNX export, its check, its runtime in tools/test.py and tools/infer.py, the Python API,
and the bad inputs of tools/export.py. Real onnx and onnxruntime."""
import json
import os
import os.path as osp

import numpy as np
import pytest
import torch

from helpers import REPO, SYNTHETIC_CONFIG, TINY_MODEL_OPTIONS, data_cfg_options, load_tool
from projects.dino_dinov2 import deploy
from projects.dino_dinov2.cli import exit_on_user_error

RECIPE_S = osp.join(REPO, 'configs', 'dino_dinov2_s_12ep.py')
# the ViT-S recipe made small, its test resize at the synthetic images' 128 px
RECIPE_SMALL = [*TINY_MODEL_OPTIONS, 'model.backbone.pretrained=False',
                'model.bbox_head.num_classes=3',
                'test_dataloader.dataset.pipeline.1.scale=(128,128)']


def own_data_flags(root):
    return ['--train-ann', f'{root}/annotations/instances_train.json',
            '--train-img', f'{root}/train', '--val-ann', f'{root}/annotations/instances_val.json',
            '--val-img', f'{root}/val', '--test-ann',
            f'{root}/annotations/instances_val.json', '--test-img', f'{root}/val']


@pytest.fixture(scope='module')
def synthetic_export(synthetic_run, tmp_path_factory):
    """The 2-epoch synthetic detector exported at 128x128 (its images' size)."""
    out = str(tmp_path_factory.mktemp('export') / 'synthetic.onnx')
    ckpt = osp.join(synthetic_run, 'epoch_2.pth')
    assert load_tool('export').main([SYNTHETIC_CONFIG, ckpt, '--out', out,
                                     '--shape', '128x128']) == 0
    return ckpt, out


@pytest.fixture(scope='module')
def recipe_checkpoint(tmp_path_factory):
    """A checkpoint of the ViT-S recipe architecture made small (random weights)."""
    from original_parity import cfg_options
    from projects.dino_dinov2.cli import load_config
    from projects.dino_dinov2.cli import build_target_model
    cfg = load_config(RECIPE_S, cfg_options(RECIPE_SMALL))
    torch.manual_seed(0)
    model = build_target_model(cfg)
    model.init_weights()
    path = str(tmp_path_factory.mktemp('recipe') / 'recipe_small.pth')
    torch.save({'state_dict': model.state_dict(),
                'meta': {'dataset_meta': {'classes': ('a', 'b', 'c')}}}, path)
    return path


def first_val_image(root):
    return osp.join(root, 'val', sorted(os.listdir(osp.join(root, 'val')))[0])


def _test_map(argv, monkeypatch):
    monkeypatch.setenv('LOCAL_RANK', '0')
    return load_tool('test').main(argv)['coco/bbox_mAP']


def test_sidecar_and_graph(synthetic_export):
    import onnx
    _, out = synthetic_export
    onnx.checker.check_model(onnx.load(out))
    info = deploy.read_sidecar(out)
    assert info['input']['shape'] == [1, 3, 128, 128]
    assert info['export']['opset'] == 17 and 'dynamo=False' in info['export']['exporter']
    assert info['classes'] == ['red circle', 'green square', 'blue triangle'] or \
        len(info['classes']) == 3
    assert len(info['source']['sha256']) == 64 and info['outputs']['K'] == 50
    ops = {n.op_type for n in onnx.load(out).graph.node}
    assert 'GridSample' in ops and 'LayerNormalization' in ops and 'TopK' in ops
    assert not any(op.startswith('mmcv') or op == 'ATen' for op in ops)  # no custom op


def test_check_and_onnxruntime_map_equal_pytorch(synthetic_export, synthetic_data, tmp_path,
                                                 monkeypatch, capsys):
    ckpt, out = synthetic_export
    images = sorted(os.listdir(osp.join(synthetic_data, 'val')))[:2]
    images = [osp.join(synthetic_data, 'val', name) for name in images]
    rows, ok = deploy.check(SYNTHETIC_CONFIG, ckpt, out, images)
    assert ok and all(r['labels'] >= 0.98 and r['boxes'] < 1e-2 for r in rows), rows
    options = ['--cfg-options', *data_cfg_options(synthetic_data)]
    torch_map = _test_map([SYNTHETIC_CONFIG, ckpt, '--work-dir', str(tmp_path / 'pt'),
                           *options], monkeypatch)
    onnx_map = _test_map([SYNTHETIC_CONFIG, ckpt, '--work-dir', str(tmp_path / 'ort'),
                          '--backend', 'onnxruntime', '--onnx', out, *options], monkeypatch)
    assert torch_map > 0.02  # trained: the comparison is not of two zeros
    assert abs(onnx_map - torch_map) <= 0.002, (onnx_map, torch_map)


def test_recipe_architecture_exports_and_evaluates(recipe_checkpoint, synthetic_data, tmp_path,
                                                   monkeypatch, capsys):
    out = str(tmp_path / 'recipe.onnx')
    image = first_val_image(synthetic_data)
    code = load_tool('export').main([RECIPE_S, recipe_checkpoint, '--out', out, '--shape',
                                     '128x128', '--check', image, '--cfg-options',
                                     *RECIPE_SMALL])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert 'agree' in printed and '<-' not in printed
    options = [*own_data_flags(synthetic_data), '--cfg-options', *RECIPE_SMALL]
    torch_map = _test_map([RECIPE_S, recipe_checkpoint, '--work-dir', str(tmp_path / 'pt'),
                           *options], monkeypatch)
    onnx_map = _test_map([RECIPE_S, recipe_checkpoint, '--work-dir', str(tmp_path / 'ort'),
                          '--backend', 'onnxruntime', '--onnx', out, *options], monkeypatch)
    assert abs(onnx_map - torch_map) <= 0.002, (onnx_map, torch_map)


def test_dynamic_batch(synthetic_export, tmp_path):
    ckpt, _ = synthetic_export
    out = str(tmp_path / 'dyn.onnx')
    deploy.export(SYNTHETIC_CONFIG, ckpt, out, (128, 128), dynamic_batch=True)
    session = deploy.open_graph(out)
    x = torch.rand(3, 3, 128, 128) * 255
    boxes, scores, labels = session.run(x.numpy())
    assert boxes.shape == (3, 50, 4) and labels.dtype == np.int64
    one = session.run(x[1:2].numpy())
    np.testing.assert_allclose(one[1][0], scores[1], atol=1e-5)
    assert deploy.read_sidecar(out)['input']['shape'][0] == 'N'


def test_python_api_from_checkpoint_onnx_and_openvino(synthetic_export, synthetic_data):
    from PIL import Image
    ckpt, out = synthetic_export
    path = first_val_image(synthetic_data)
    by_torch = deploy.Detector.from_checkpoint(SYNTHETIC_CONFIG, ckpt, device='cpu')
    by_onnx = deploy.Detector.from_onnx(out)
    by_openvino = deploy.Detector.from_openvino(out)
    assert by_openvino.backend == 'openvino' and 'f32' in by_openvino.session.describe()
    a = by_torch.predict(path, score_thr=0.3)
    b = by_onnx.predict(np.asarray(Image.open(path).convert('RGB')), score_thr=0.3)
    c = by_onnx.predict(Image.open(path))
    d = by_openvino.predict(path, score_thr=0.3)
    assert len(a) > 0 and len(a) == len(b) == len(d)
    np.testing.assert_allclose(a.boxes, b.boxes, atol=0.05)
    np.testing.assert_allclose(d.boxes, b.boxes, atol=0.05)
    assert a.class_names == b.class_names and set(a.class_names) <= set(by_onnx.classes)
    assert len(c) == 50 and c.image_size == (128, 128)
    try:
        import supervision  # noqa: F401
    except ImportError:
        with pytest.raises(deploy.ExportError, match='pip install supervision'):
            b.to_supervision()
    else:
        assert len(b.to_supervision()) == len(b)


def test_infer_with_each_backend(synthetic_export, synthetic_data, tmp_path):
    ckpt, out = synthetic_export
    image = first_val_image(synthetic_data)
    backends = ('pytorch', 'onnxruntime', 'openvino')
    for backend in backends:
        argv = [SYNTHETIC_CONFIG, ckpt, image, '--out-dir', str(tmp_path / backend),
                '--device', 'cpu', '--backend', backend, '--onnx', out]
        assert load_tool('infer').main(argv) == 0
        assert osp.isfile(tmp_path / backend / osp.basename(image))  # drawn
    dets = [json.load(open(tmp_path / b / 'predictions.json'))['images'][0]['detections']
            for b in backends]
    for other in dets[1:]:
        assert [d['label_name'] for d in other] == [d['label_name'] for d in dets[0]]
        np.testing.assert_allclose([d['bbox'] for d in other], [d['bbox'] for d in dets[0]],
                                   atol=0.05)


def _run_export(argv, capsys):
    with pytest.raises(SystemExit) as e:
        with exit_on_user_error():
            load_tool('export').main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2, err
    return err[-1]


@pytest.mark.parametrize('shape, message', [
    ('0x512', 'must be positive'), ('-4x512', 'must be positive'),
    ('512', 'give HEIGHTxWIDTH'), ('big', 'give HEIGHTxWIDTH'),
    ('32x512', 'at least 64 px'),
])
def test_impossible_shapes(shape, message, synthetic_export, tmp_path, capsys):
    ckpt, _ = synthetic_export
    out = tmp_path / 'x.onnx'
    line = _run_export([SYNTHETIC_CONFIG, ckpt, '--out', str(out), f'--shape={shape}'],
                       capsys)
    assert line.startswith('error: --shape') and message in line
    assert not out.exists() and not os.listdir(tmp_path)


def test_other_config_unreadable_image_missing_onnxruntime(synthetic_export, tmp_path,
                                                           capsys, monkeypatch):
    ckpt, _ = synthetic_export
    out = tmp_path / 'x.onnx'
    line = _run_export([RECIPE_S, ckpt, '--out', str(out), '--cfg-options',
                        *RECIPE_SMALL], capsys)
    assert 'a checkpoint of another model' in line
    bad = tmp_path / 'bad.jpg'
    bad.write_bytes(b'not an image')
    line = _run_export([SYNTHETIC_CONFIG, ckpt, '--out', str(out), '--check', str(bad)],
                       capsys)
    assert str(bad) in line and 'cannot be read' in line
    import sys
    monkeypatch.setitem(sys.modules, 'onnxruntime', None)  # import fails as if missing
    line = _run_export([SYNTHETIC_CONFIG, ckpt, '--out', str(out), '--check', str(bad)],
                       capsys)
    assert 'onnxruntime is not installed' in line and 'pip install' in line
    assert os.listdir(tmp_path) == ['bad.jpg']  # nothing half-written


def test_inference_benchmark_rows(synthetic_export, synthetic_data, tmp_path):
    """tools/benchmark.py --inference prints a row per runtime, each from its own
    process, with its agreement with PyTorch on the same image, and again in turn in one
    process (``interleave``); a runtime missing here says so instead of a number."""
    ckpt, _ = synthetic_export
    from analysis_tools import inference_benchmark as ib
    rows = ('pytorch-fp32', 'onnxruntime', 'onnxruntime-gridsample', 'openvino-int8',
            'openvino-int8-fused', 'tensorrt-fp16')
    results = ib.run(SYNTHETIC_CONFIG, ckpt, (128, 128), iters=2, warmup=1,
                     out_dir=str(tmp_path), device='cpu', rows=rows,
                     calib=osp.join(synthetic_data, 'val'), calib_images=4,
                     image=first_val_image(synthetic_data), interleave=2)
    by_row = {r['row']: r for r in results}
    assert tuple(by_row) == rows
    for name in rows[:5]:
        assert by_row[name]['median_ms'] > 0 and by_row[name]['peak_mb'] > 0, by_row[name]
        assert by_row[name]['interleaved_ms'] > 0
    assert 'interleaved_ms' not in by_row['tensorrt-fp16']
    for name in ('onnxruntime', 'onnxruntime-gridsample'):  # float32: the same detections
        assert by_row[name]['agree'] >= 0.98 and by_row[name]['max_box_diff'] < 0.05
    for name in ('openvino-int8', 'openvino-int8-fused'):  # INT8: its AP is the test
        assert by_row[name]['agree'] > 0.3, by_row[name]
    assert 'fused deformable sampling' in by_row['openvino-int8-fused']['runtime']
    assert 'not measured' in by_row['tensorrt-fp16']['skipped']
    text = ib.table(results, 'title')
    assert 'onnxruntime (onnxruntime CPUExecutionProvider' in text and 'openvino CPU' in text
    assert '| in turn (ms) |' in text
    assert osp.isfile(tmp_path / 'inference.json')


def test_deformable_sampling_forms_agree_and_are_timed(capsys):
    """tools/analysis_tools/deform_attn_graph.py: each graph form of the sampling, exported
    alone, gives mmcv's result to float32 rounding on every runtime (zero padding near the
    borders included) and is timed on each."""
    from analysis_tools import deform_attn_graph as dag
    dag.main(['--size', '128', '--repeats', '1'])
    rows = [line.split('|')[1:-1] for line in capsys.readouterr().out.splitlines()
            if line.startswith('| ') and ('encoder' in line or 'decoder' in line)]
    seen = {(r[2].strip(), r[3].strip()) for r in rows}
    for form in dag.FORMS:  # the fused node: OpenVINO only (its extension built here)
        for runtime in ('onnxruntime', 'openvino-f32', 'openvino-bf16', 'eager'):
            expected = (form, runtime) != ('fused', 'onnxruntime')
            assert ((form, runtime) in seen) == expected, (form, runtime)
    for layer, _, form, runtime, ms, diff in rows:
        if runtime.strip() == 'openvino-bf16':
            continue  # bf16 inputs: 8 bits of mantissa
        assert float(diff) < 1e-4, (layer, form, runtime, diff)
        if runtime.strip() != 'eager':
            assert float(ms) > 0
