"""Inference demo: a checkpoint trained on the synthetic set draws boxes on its images."""
import json
import os
import os.path as osp
import subprocess
import sys

import numpy as np
import pytest

from helpers import REPO, SYNTHETIC_CONFIG as SYNTHETIC, exit_code, load_tool
CLASSES = ['circle', 'square', 'triangle']


pytestmark = pytest.mark.usefixtures('one_torch_thread')


def read_rgb(path):
    from PIL import Image
    return np.asarray(Image.open(path).convert('RGB'))


def test_infer_cli_writes_boxes_json_and_drawn_images(synthetic_run, synthetic_data,
                                                      tmp_path):
    images = [osp.join(synthetic_data, 'val', f'{i:06d}.png') for i in range(2)]
    out = tmp_path / 'demo'
    proc = subprocess.run(
        [sys.executable, 'tools/infer.py', SYNTHETIC, osp.join(synthetic_run, 'epoch_2.pth'),
         *images, '--out-dir', str(out), '--score-thr', '0', '--device', 'cpu'],
        cwd=REPO, capture_output=True, text=True, timeout=600,
        env=dict(os.environ, OMP_NUM_THREADS='1'))  # see one_torch_thread
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads((out / 'predictions.json').read_text())
    assert result['classes'] == CLASSES  # from the checkpoint's dataset_meta
    assert [e['image'] for e in result['images']] == images
    for entry in result['images']:
        dets = entry['detections']
        assert (entry['height'], entry['width']) == (128, 128)
        assert len(dets) == 50  # the synthetic config keeps 50 boxes per image
        scores = [d['score'] for d in dets]
        assert scores == sorted(scores, reverse=True) and 0 <= scores[-1] <= scores[0] <= 1
        for d in dets:
            x0, y0, x1, y1 = d['bbox']
            assert -1 <= x0 <= x1 <= 129 and -1 <= y0 <= y1 <= 129
            assert d['label_name'] == CLASSES[d['label']]
        drawn, original = read_rgb(entry['vis']), read_rgb(entry['image'])
        assert drawn.shape == original.shape
        assert (drawn != original).any(axis=2).mean() > 0.01  # boxes are on it
    assert osp.basename(result['images'][0]['vis']) == '000000.png'
    assert '50 boxes >= 0.0' in proc.stdout


def test_score_threshold_filters_json_and_drawing(synthetic_run, synthetic_data, tmp_path):
    from mmdet.apis import inference_detector

    from projects.dino_dinov2.deploy import inference
    image = osp.join(synthetic_data, 'val', '000000.png')
    ckpt = osp.join(synthetic_run, 'epoch_2.pth')
    model = inference.load_detector(SYNTHETIC, ckpt, device='cpu')
    assert inference.class_names(model) == tuple(CLASSES)
    sample = inference_detector(model, image)
    every = inference.detections(sample, CLASSES, 0.0)
    thr = every[len(every) // 2]['score']
    kept = inference.detections(sample, CLASSES, thr)
    assert 0 < len(kept) < len(every)
    assert all(d['score'] >= thr - 1e-4 for d in kept)
    assert [d['bbox'] for d in kept] == [d['bbox'] for d in every[:len(kept)]]

    # above every score: empty JSON and the image drawn unchanged; a folder = its images
    none = inference.run_inference(SYNTHETIC, ckpt, [osp.dirname(image)],
                                   str(tmp_path / 'none'), score_thr=1.01, model=model)
    assert len(none['images']) == 8
    entry = none['images'][0]
    assert entry['image'] == image and entry['detections'] == []
    np.testing.assert_array_equal(read_rgb(entry['vis']), read_rgb(image))


def test_missing_inputs_are_reported(tmp_path, capsys):
    main = load_tool('infer').main  # exits as its __main__ block does: one line, status 2
    assert exit_code(main, [SYNTHETIC, str(tmp_path / 'model.pth'), str(tmp_path / 'nope.png'),
                            '--out-dir', str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith('error: image not found')
    image = tmp_path / 'img.png'
    image.write_bytes(b'')
    assert exit_code(main, [SYNTHETIC, str(tmp_path / 'model.pth'), str(image),
                            '--out-dir', str(tmp_path)]) == 2
    assert capsys.readouterr().err.startswith('error: checkpoint not found')


def test_a_bad_file_among_good_ones_is_skipped_and_the_rest_written(
        synthetic_run, synthetic_data, tmp_path, capsys):
    import shutil
    folder = tmp_path / 'photos'
    folder.mkdir()
    for i in range(2):
        shutil.copy(osp.join(synthetic_data, 'val', f'{i:06d}.png'), folder)
    (folder / 'broken.png').write_text('not an image')
    main = load_tool('infer').main
    ckpt = osp.join(synthetic_run, 'epoch_2.pth')
    out = tmp_path / 'out'
    assert exit_code(main, [SYNTHETIC, ckpt, str(folder), '--out-dir', str(out), '--device',
                            'cpu', '--no-draw']) == 0
    captured = capsys.readouterr()
    [warning] = [ln for ln in captured.err.splitlines() if ln.startswith('warning: ')]
    assert 'broken.png cannot be read as an image' in warning
    assert '2 images; 1 skipped' in captured.out
    result = json.loads((out / 'predictions.json').read_text())
    assert [osp.basename(e['image']) for e in result['images']] == ['000000.png',
                                                                    '000001.png']
    assert [osp.basename(s['image']) for s in result['skipped']] == ['broken.png']
    # the bad file alone: one line, exit 2, nothing written
    assert exit_code(main, [SYNTHETIC, ckpt, str(folder / 'broken.png'), '--out-dir',
                            str(tmp_path / 'alone'), '--device', 'cpu']) == 2
    err = capsys.readouterr().err
    assert err.startswith('error: ') and 'broken.png cannot be read as an image' in err
    assert 'internal error' not in err and not (tmp_path / 'alone').exists()
