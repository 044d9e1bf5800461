"""Training benchmark on the CPU with the synthetic config: tiny images, few iterations."""
import json
import os
import os.path as osp
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from analysis_tools import benchmark as bm

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
SYNTHETIC = osp.join(REPO, 'configs', 'dino_dinov2_synthetic.py')
LABEL = 'ViT-S (depth 4, dim 192)'  # the synthetic config's 4-block, dim-192 ViT
# One timed training step per cell, no inference (the other tests time inference).
FAST = ['--iters', '1', '--warmup', '0', '--infer-iters', '0', '--img-size', '64',
        '--device', 'cpu', '--threads', '1']


pytestmark = pytest.mark.usefixtures('one_torch_thread')


def run_cli(args, out_dir):
    proc = subprocess.run([sys.executable, 'tools/benchmark.py', SYNTHETIC, *args,
                           '--out-dir', str(out_dir)], cwd=REPO, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc.stdout, json.loads((out_dir / 'benchmark.json').read_text())


def row_pattern(precision, batch):
    return re.compile(rf'^\| {re.escape(LABEL)} \| {precision} \| {batch} \| '
                      rf'(\d+\.\d{{4}}) s \| (\d+) MiB \|$', re.M)


def test_grid_prints_the_original_table_and_writes_json(tmp_path):
    stdout, report = run_cli(['--precision', 'full', 'mixed', '--batch-sizes', '1', '2',
                              *FAST], tmp_path)
    assert bm.TABLE_HEADER in stdout
    for precision in ('Full', 'Mixed'):
        for batch in (1, 2):
            (m, ) = row_pattern(precision, batch).finditer(stdout)
            assert float(m.group(1)) > 0 and int(m.group(2)) > 100
    results = report['results']
    assert [(r['precision'], r['batch_size']) for r in results] == [
        ('full', 1), ('full', 2), ('mixed', 1), ('mixed', 2)]
    for r in results:
        assert r['device'] == 'cpu' and r['data'] == 'synthetic'
        assert r['image_size'] == [64, 64] and r['iters'] == 1 and r['warmup'] == 0
        assert len(r['iter_times']) == 1 and r['iter_time'] == r['iter_times'][0] > 0
        assert r['memory_kind'].startswith('cpu') and r['memory_reserved_mib'] is None
        assert r['infer_images_per_s'] is None and r['data_time'] is None
        assert r['amp_dtype'] == ('bfloat16' if r['precision'] == 'mixed' else None)
    assert report['ratios'] == []
    md = (tmp_path / 'benchmark.md').read_text()
    assert bm.TABLE_HEADER in md and '## Details' in md


def test_baseline_runs_in_the_same_process_and_prints_ratios(tmp_path, capsys):
    from tools.benchmark import main
    assert main([SYNTHETIC, '--precision', 'full', '--batch-sizes', '1', '--iters', '1',
                 '--warmup', '0', '--infer-iters', '1', '--img-size', '64', '--device',
                 'cpu', '--baseline', '--baseline-cfg-options', 'model.num_queries=20',
                 '--baseline-label', 'ViT-S 20q', '--out-dir', str(tmp_path)]) == 0
    stdout = capsys.readouterr().out
    report = json.loads((tmp_path / 'benchmark.json').read_text())
    results = report['results']
    assert [r['role'] for r in results] == ['candidate', 'baseline']
    assert results[1]['cfg_options'] == {'model.num_queries': 20}
    assert results[1]['backbone'] == 'ViT-S 20q'
    (ratio, ) = report['ratios']
    assert ratio['time'] == pytest.approx(results[0]['iter_time'] / results[1]['iter_time'])
    assert ratio['memory'] == pytest.approx(results[0]['memory_mib'] / results[1]['memory_mib'])
    line = [ln for ln in stdout.splitlines() if ln.startswith(f'| {LABEL} | ViT-S 20q |')]
    assert len(line) == 1 and f'{ratio["time"]:.3f}' in line[0], stdout
    assert 'Ratios (candidate / baseline)' in stdout


def test_second_baseline_row(tmp_path):
    """--extra-baseline-cfg-options: the original-equivalent (stock mmdet) config measured
    twice, the second time with other settings."""
    from tools.benchmark import main
    original = SYNTHETIC.replace('synthetic.py', 'synthetic_original.py')
    assert main([SYNTHETIC, '--precision', 'mixed', '--batch-sizes', '1', '--iters', '1',
                 '--warmup', '0', '--infer-iters', '1', '--img-size', '64', '--device',
                 'cpu', '--baseline', original, '--baseline-label', 'original (pytorch)',
                 '--extra-baseline-cfg-options', 'model.num_queries=20',
                 '--extra-baseline-label', 'original (20 queries)', '--out-dir',
                 str(tmp_path)]) == 0
    report = json.loads((tmp_path / 'benchmark.json').read_text())
    results = report['results']
    assert [r['role'] for r in results] == ['candidate', 'baseline', 'baseline']
    assert [r['backbone'] for r in results[1:]] == ['original (pytorch)',
                                                   'original (20 queries)']
    assert results[2]['cfg_options'] == {'model.num_queries': 20}
    # the original-equivalent mode's "Mixed" is float16 (the original's autocast default)
    # on a GPU; mmengine's CPU autocast takes bfloat16 only
    want = 'float16' if torch.cuda.is_available() else 'bfloat16'
    assert [r['amp_dtype'] for r in results] == ['bfloat16', want, want]
    assert [r['baseline'] for r in report['ratios']] == ['original (pytorch)',
                                                         'original (20 queries)']


_PEAK = r'''
import numpy as np, torch
from analysis_tools import benchmark as bm
memory = bm.PeakMemory(torch.device('cpu'))
memory.reset()
before, _ = memory.read()
block = np.ones(200 * 2**20 // 8)  # 200 MiB, touched
after, reserved = memory.read()
print(memory.kind, reserved, after - before)
'''


def test_cpu_peak_memory_sees_a_new_allocation():
    """In a fresh process (the suite's own process has a peak of its own and may not
    reset it): the high-water mark is reset and a 200 MiB block is seen."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, osp.join(REPO, 'tools')]))
    out = subprocess.run([sys.executable, '-c', _PEAK], capture_output=True, text=True,
                         env=env, timeout=300)
    kind, reserved, grown = out.stdout.split()
    assert kind == 'cpu_peak_rss' and reserved == 'None' and float(grown) > 150, out


def test_synthetic_batch_is_a_collated_detection_batch():
    batch = bm.synthetic_batch(3, (48, 80), num_classes=3, num_gt=4, seed=1)
    assert [t.shape for t in batch['inputs']] == [torch.Size([3, 48, 80])] * 3
    assert all(t.dtype == torch.uint8 for t in batch['inputs'])
    for s in batch['data_samples']:
        boxes = s.gt_instances.bboxes.tensor
        assert boxes.shape == (4, 4)
        assert (boxes[:, 0] >= 0).all() and (boxes[:, 2] <= 80).all()
        assert (boxes[:, 1] >= 0).all() and (boxes[:, 3] <= 48).all()
        assert (boxes[:, 2:] > boxes[:, :2]).all()
        assert s.gt_instances.labels.max() < 3
        assert s.metainfo['scale_factor'] == (1.0, 1.0)
    again = bm.synthetic_batch(3, (48, 80), num_classes=3, num_gt=4, seed=1)
    assert torch.equal(batch['inputs'][2], again['inputs'][2])


def test_config_defaults_follow_the_recipe():
    recipe = bm.load_variant_config(
        bm.Variant(osp.join(REPO, 'configs', 'dino_dinov2_s_12ep.py')))
    assert bm.default_image_size(recipe) == (800, 1333)
    assert bm.backbone_label(recipe) == 'ViT-S'
    assert recipe.model.backbone.pretrained is False  # nothing is downloaded for timing
    b = bm.load_variant_config(bm.Variant(osp.join(REPO, 'configs', 'dino_dinov2_b_12ep.py')))
    assert bm.backbone_label(b) == 'ViT-B'
    tiny = bm.load_variant_config(bm.Variant(SYNTHETIC))
    assert bm.backbone_label(tiny) == LABEL


def test_real_data_from_the_configs_dataloader_reports_data_time(synthetic_data):
    root = synthetic_data.rstrip('/') + '/'
    variant = bm.Variant(SYNTHETIC, {'train_dataloader.dataset.data_root': root,
                                     'val_dataloader.dataset.data_root': root})
    r = bm.run_cell(variant, 'full', 2, device='cpu', iters=2, warmup=0, infer_iters=1,
                    real_data=True)
    assert r.data == 'real' and r.image_size is None
    assert r.data_time is not None and 0 < r.data_time < r.iter_time
    assert len(r.iter_times) == 2 and r.iter_time == pytest.approx(np.median(r.iter_times))
    assert r.iter_time_p25 <= r.iter_time <= r.iter_time_p75
    assert r.iter_time > 0 and r.infer_images_per_s > 0 and r.memory_mib > 100
    assert '| real' not in bm.markdown_table([r])  # the original's five columns only
    assert f'{r.data_time:.4f}' in bm.details_table([r])


def test_deformable_attention_implementations_side_by_side(tmp_path, capsys):
    """--deform-attn: each implementation on the same inputs (here the PyTorch path and
    the Triton kernels in Triton's interpreter; on a GPU also mmcv's CUDA kernel)."""
    from analysis_tools import kernel_benchmark as kb
    results = kb.run_kernels('cpu', ['pytorch', 'triton'], ['float32'],
                             levels=((6, 9), (3, 5), (1, 1)), batch=1, decoder_queries=12,
                             iters=1, warmup=0, log=None)
    assert [(r.layer, r.impl) for r in results] == [
        ('encoder', 'pytorch'), ('encoder', 'triton'), ('decoder', 'pytorch'),
        ('decoder', 'triton')]
    assert results[0].queries == 6 * 9 + 3 * 5 + 1 and results[2].queries == 12
    assert all(r.max_rel_diff < 1e-5 and r.forward_ms > 0 for r in results)
    assert '| encoder (70) | float32 | triton |' in kb.kernel_table(results)
    from tools.benchmark import main
    assert main(['--deform-attn', '--deform-attn-impls', 'pytorch', '--deform-attn-levels',
                 '4', '4', '2', '2', '--precision', 'full', '--iters', '1', '--warmup', '0',
                 '--device', 'cpu', '--out-dir', str(tmp_path)]) == 0
    assert '| decoder (1000) | float32 | pytorch |' in (tmp_path / 'deform_attn.md').read_text()
