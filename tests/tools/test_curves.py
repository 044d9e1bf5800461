"""Learning curves: MMEngine logs of a real synthetic-config run, W&B CSV exports, plots."""
import csv
import glob
import json
import os
import os.path as osp
import subprocess
import sys
import time

import numpy as np
import pytest

from helpers import exit_code
from analysis_tools import log_readers as readers, reports

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


def read_scalars(work_dir):
    (path, ) = glob.glob(osp.join(work_dir, '*', 'vis_data', 'scalars.json'))
    rows = [json.loads(line) for line in open(path) if line.strip()]
    return [r for r in rows if 'loss' in r], [r for r in rows if 'coco/bbox_mAP' in r]


def png_shape(path):
    import matplotlib.image
    assert open(path, 'rb').read(8) == b'\x89PNG\r\n\x1a\n'
    return matplotlib.image.imread(path).shape


# ---------------------------------------------------------------- the real run's log

def test_plot_curves_cli_on_a_real_work_dir(synthetic_run, tmp_path):
    """The main job's call: ``plot_curves.py WORK_DIR --out-dir WORK_DIR/plots``."""
    out = tmp_path / 'plots'
    proc = subprocess.run([sys.executable, 'tools/plot_curves.py', synthetic_run,
                           '--out-dir', str(out)], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ('bbox_ap.png', 'loss.png'):
        h, w, _ = png_shape(out / name)
        assert h > 300 and w > 500
    train, val = read_scalars(synthetic_run)
    series = json.loads((out / 'curves.json').read_text())
    (run, ) = series['runs']
    assert run['name'] == osp.basename(synthetic_run)
    # 16 images at batch 4: 4 iterations per epoch, read back from the log itself
    assert run['iters_per_epoch'] == 4
    ap = run['val']['AP']
    assert ap['epoch'] == [float(r['step']) for r in val] == [1.0, 2.0]
    assert ap['iter'] == [4.0, 8.0]
    assert ap['value'] == pytest.approx([100 * r['coco/bbox_mAP'] for r in val])
    loss = run['train']['loss']
    assert loss['iter'] == [float(r['iter']) for r in train]
    assert loss['value'] == pytest.approx([r['loss'] for r in train])
    assert run['train']['lr']['value'] == pytest.approx([r['lr'] for r in train])
    assert 'validation points' in proc.stdout


def test_figures_hold_the_logged_series(synthetic_run):
    (run, ) = readers.load_runs(synthetic_run)
    train, val = read_scalars(synthetic_run)
    fig = reports.plot_ap([run])
    (line, ) = fig.axes[0].get_lines()
    np.testing.assert_allclose(line.get_xdata(), [1, 2])  # epochs
    np.testing.assert_allclose(line.get_ydata(), [100 * r['coco/bbox_mAP'] for r in val])
    assert fig.axes[0].get_xlabel() == 'epoch'

    fig = reports.plot_loss([run], window=3)
    lines = {ln.get_gid(): ln for ax in fig.axes for ln in ax.get_lines()}
    name = run.name
    raw, smoothed, lr = lines[f'raw:{name}'], lines[f'smoothed:{name}'], lines[f'lr:{name}']
    np.testing.assert_allclose(raw.get_xdata(), [r['iter'] for r in train])
    np.testing.assert_allclose(raw.get_ydata(), [r['loss'] for r in train])
    losses = np.array([r['loss'] for r in train])
    expected = [losses[max(0, i - 2):i + 1].mean() for i in range(len(losses))]
    np.testing.assert_allclose(smoothed.get_ydata(), expected)
    np.testing.assert_allclose(lr.get_ydata(), [r['lr'] for r in train])
    assert lr.axes is not raw.axes  # the lr has its own (right) axis
    # COCO writes -1 where no object has that size: not a value to plot
    if any(r['coco/bbox_mAP_l'] == -1 for r in val):
        assert np.isnan(run.val['APl'].values).any()


def test_newest_run_of_a_work_dir_is_read(tmp_path):
    def write(stamp, ap):
        d = tmp_path / stamp / 'vis_data'
        d.mkdir(parents=True)
        (d / 'scalars.json').write_text(
            json.dumps(dict(lr=1e-4, loss=3.0, epoch=1, iter=10, step=10)) + '\n'
            + json.dumps({'coco/bbox_mAP': ap, 'step': 1}) + '\n')
    write('20240102_000000', 0.5)
    write('20240101_000000', 0.1)
    old = tmp_path / '20240101_000000' / 'vis_data' / 'scalars.json'
    os.utime(old, (time.time() + 100, time.time() + 100))  # newer mtime, older run
    (run, ) = readers.load_runs(str(tmp_path))
    assert run.metric('AP').values.tolist() == [50.0]
    assert run.name == tmp_path.name


def test_a_resumed_job_reads_as_one_curve(tmp_path):
    """Preempted in epoch 4 (iterations 13-14 logged, no checkpoint), resumed from
    epoch_3.pth in a new timestamp folder: the joined curve has no gap and no repeat."""
    def write(stamp, iters, epochs_val):
        d = tmp_path / stamp / 'vis_data'
        d.mkdir(parents=True)
        rows = [dict(lr=1e-4, loss=10.0 / i + (0.5 if stamp.endswith('1') else 0),
                     epoch=(i - 1) // 4 + 1, iter=i, step=i) for i in iters]
        rows += [{'coco/bbox_mAP': e / 10, 'step': e} for e in epochs_val]
        (d / 'scalars.json').write_text(''.join(json.dumps(r) + '\n' for r in rows))
    write('20240101_000001', range(1, 15), [1, 2, 3])
    write('20240101_000002', range(13, 25), [4, 5, 6])
    (run, ) = readers.load_runs(str(tmp_path))
    assert run.train['loss'].iters.tolist() == list(range(1, 25))
    first, second = run.train['loss'].values[:12], run.train['loss'].values[12:]
    np.testing.assert_allclose(first, [10.0 / i + 0.5 for i in range(1, 13)])  # run 1
    np.testing.assert_allclose(second, [10.0 / i for i in range(13, 25)])  # run 2
    assert run.metric('AP').epochs.tolist() == [1, 2, 3, 4, 5, 6]
    assert run.iters_per_epoch == 4 and len(run.sources) == 2
    assert readers.find_scalars_json(str(tmp_path)).endswith(
        osp.join('20240101_000002', 'vis_data', 'scalars.json'))


def test_scalars_json_with_hierarchy_keys_and_a_partial_last_line(tmp_path):
    path = tmp_path / 'scalars.json'
    path.write_text(
        json.dumps({'train/loss': 2.0, 'train/lr': 1e-4, 'epoch': 1, 'iter': 5, 'step': 5})
        + '\n' + json.dumps({'val/coco/bbox_mAP': 0.25, 'step': 1}) + '\n'
        + '{"train/loss": 1.')  # a live run writing its next line
    (run, ) = readers.load_runs(str(path))
    assert run.train['loss'].values.tolist() == [2.0]
    assert run.metric('AP').values.tolist() == [25.0]
    assert run.iters_per_epoch == 5


def test_iters_per_epoch_from_training_lines():
    # logged every 3 iterations and at each epoch's end (4 iterations per epoch)
    iters = [3, 4, 7, 8, 11, 12]
    epochs = [1, 1, 2, 2, 3, 3]
    assert readers.infer_iters_per_epoch(iters, epochs) == 4
    assert readers.infer_iters_per_epoch([5, 6], [1, 3]) is None  # inconsistent


# ---------------------------------------------------------------- W&B exports

def write_csv(path, header, rows):
    with open(path, 'w', newline='') as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def test_wandb_panel_export_with_two_runs_plots_two_legend_entries(tmp_path):
    path = tmp_path / 'bbox_AP.csv'
    rows = []
    for i, step in enumerate(range(2500, 30001, 2500)):
        a, b = 30 + i, 25 + 1.5 * i
        rows.append([step, a, a - 1, a + 1, '' if i == 3 else b, b - 1, b + 1])
    write_csv(path, ['Step', 'vit_b - bbox/AP', 'vit_b - bbox/AP__MIN',
                     'vit_b - bbox/AP__MAX', 'vit_s - bbox/AP', 'vit_s - bbox/AP__MIN',
                     'vit_s - bbox/AP__MAX'], rows)
    runs = readers.load_runs(str(path))
    assert [r.name for r in runs] == ['vit_b', 'vit_s']
    vit_b, vit_s = runs
    assert vit_b.metric('AP').iters.tolist() == list(range(2500, 30001, 2500))
    assert vit_b.metric('AP').values.tolist() == [30.0 + i for i in range(12)]
    assert len(vit_s.metric('AP')) == 11  # the empty cell is skipped, not zero

    out = tmp_path / 'plots'
    written = reports.save_curves(runs, str(out))
    assert set(written) == {'bbox_ap', 'series'}  # no loss column: no loss.png
    assert png_shape(written['bbox_ap'])[0] > 300
    fig = reports.plot_ap(runs)
    assert fig.axes[0].get_xlabel() == 'iteration'  # W&B steps are iterations
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ['vit_b', 'vit_s']


def test_wandb_history_export_and_iters_per_epoch(tmp_path):
    path = tmp_path / 'history.csv'
    rows = [[s, '' if s % 2500 else 20 + s / 2500, 5.0 - s / 10000, 1e-4 if s < 8000 else 1e-5]
            for s in range(500, 10001, 500)]
    write_csv(path, ['_step', 'bbox/AP', 'total_loss', 'lr'], rows)
    (run, ) = readers.load_runs(str(path), iters_per_epoch=2500)
    assert run.metric('AP').epochs.tolist() == [1.0, 2.0, 3.0, 4.0]
    assert run.train['loss'].values[0] == pytest.approx(4.95)
    assert run.train['lr'].values[-1] == 1e-5
    out = reports.save_curves([run], str(tmp_path / 'plots'), axis='epoch')
    assert {'bbox_ap', 'loss', 'series'} == set(out)


def test_plot_curves_cli_several_inputs_one_legend_entry_each(tmp_path, capsys):
    from tools.plot_curves import main
    for name, offset in (('a', 0), ('b', 5)):
        write_csv(tmp_path / f'{name}.csv', ['Step', 'bbox/AP', 'total_loss', 'lr'],
                  [[s, 30 + offset + s / 1000, 4 - s / 1000, 1e-4] for s in (1000, 2000, 3000)])
    out = tmp_path / 'plots'
    assert exit_code(main, [str(tmp_path / 'a.csv'), str(tmp_path / 'b.csv'), '--labels',
                            'run A', 'run B', '--out-dir', str(out)]) == 0
    series = json.loads((out / 'curves.json').read_text())
    assert [r['name'] for r in series['runs']] == ['run A', 'run B']
    assert series['runs'][1]['val']['AP']['value'] == [36.0, 37.0, 38.0]
    assert (out / 'loss.png').exists() and (out / 'bbox_ap.png').exists()


def test_bad_inputs_give_one_line_errors(tmp_path, capsys):
    from tools.plot_curves import main
    bad = tmp_path / 'bad.csv'
    write_csv(bad, ['Step', 'bbox/AP'], [[1000, 30], [2000, 'n/a']])
    with pytest.raises(readers.CurveDataError, match="'bbox/AP' row 3: not a number: 'n/a'"):
        readers.load_runs(str(bad))
    assert exit_code(main, [str(bad), '--out-dir', str(tmp_path / 'o')]) == 2
    assert capsys.readouterr().err.startswith('error: ')
    empty_dir = tmp_path / 'empty'
    empty_dir.mkdir()
    assert exit_code(main, [str(empty_dir), '--out-dir', str(tmp_path / 'o')]) == 2
    assert 'no */vis_data/scalars.json' in capsys.readouterr().err
    no_metric = tmp_path / 'other.csv'
    write_csv(no_metric, ['Step', 'accuracy'], [[1, 0.5]])
    with pytest.raises(readers.CurveDataError, match='no AP'):
        readers.load_runs(str(no_metric))


def test_smooth_is_a_nan_aware_trailing_mean():
    v = [1.0, 2.0, np.nan, 4.0, 5.0]
    np.testing.assert_allclose(reports.smooth(v, 2), [1.0, 1.5, 2.0, 4.0, 4.5])
    np.testing.assert_allclose(reports.smooth(v, 1), v)
