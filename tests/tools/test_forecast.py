"""AP forecast: parameter recovery, band coverage, backtest selection, lr-drop jump,
reports and errors. Synthetic curves with known truth; numpy/scipy only (fast)."""
import csv
import json

import numpy as np
import pytest

from helpers import exit_code
from analysis_tools import curve_fitting as fitting

# The recipe's scale: an evaluation every 2,500 iterations over 12 epochs of 7,500.
X = np.arange(1, 37) * 2500.0
TRUTH = {
    'power-law': (60.0, 800.0, 0.5),
    'exponential': (50.0, 40.0, 1 / 30000),
    'log-linear': (4.0, 5e-5, -10.0),
}


def noisy(family, seed, noise=0.2, x=X):
    rng = np.random.default_rng(seed)
    return fitting.CURVE_FAMILIES[family].fn(x, *TRUTH[family]) + rng.normal(0, noise, len(x))


def test_power_law_parameters_come_back_within_tolerance():
    fit = fitting.fit_model(fitting.CURVE_FAMILIES['power-law'], X, noisy('power-law', 0))
    a, b, c = fit.params
    assert abs(a - 60) < 1.0 and abs(c - 0.5) < 0.1 and abs(b / 800 - 1) < 0.4
    # ... and within the stated uncertainty: |error| < 3.5 standard errors
    z = (fit.params - np.array(TRUTH['power-law'])) / np.sqrt(np.diag(fit.cov))
    assert np.all(np.abs(z) < 3.5), z
    assert fit.dof == len(X) - 3


@pytest.mark.parametrize('family', ['logarithmic', 'log-linear', 'exponential'])
def test_other_families_fit_their_own_data(family):
    truth = {'logarithmic': (6.0, -25.0)}.get(family) or TRUTH[family]
    y = fitting.CURVE_FAMILIES[family].fn(X, *truth)  # noise-free: exact recovery
    fit = fitting.fit_model(fitting.CURVE_FAMILIES[family], X, y)
    np.testing.assert_allclose(fit.params, truth, rtol=1e-3, atol=1e-9)


def test_95_percent_band_covers_the_truth_about_95_percent_of_the_time():
    model = fitting.CURVE_FAMILIES['power-law']
    targets = np.array([45000.0, 375000.0])  # inside the data, and the 50-epoch target
    truth = model.fn(targets, *TRUTH['power-law'])
    hits = np.zeros(2)
    n = 100
    for seed in range(n):
        r = fitting.ModelResult(model, fitting.fit_model(model, X, noisy('power-law', seed)))
        _, lo, hi = r.predict(targets, None, level=0.95)
        hits += (lo <= truth) & (truth <= hi)
    assert np.all(hits / n >= 0.88) and np.all(hits / n <= 0.995), hits / n


@pytest.mark.parametrize('family', sorted(TRUTH))
@pytest.mark.parametrize('seed', [0, 1, 2])
def test_backtest_picks_the_generating_family(family, seed):
    result = fitting.forecast_curve(X, noisy(family, seed), target=375000)
    assert result.selected == family, {
        n: r.backtest_rmse for n, r in result.results.items()}
    # the backtest held out the tail: 30% of 36 points
    assert result.holdout == 11


def drop_curve(jump=3.0, drop_at=67500.0, seed=0):
    """A power law whose AP steps up by ``jump`` after an lr drop at ``drop_at``."""
    y = noisy('power-law', seed)
    y = y + np.where(X > drop_at, jump, 0.0)
    return y, drop_at


def test_lr_drop_fit_uses_only_pre_drop_points_and_estimates_the_jump():
    y, drop = drop_curve(jump=3.0)
    result = fitting.forecast_curve(X, y, 375000, drop_at=drop, target_drop_at=300000,
                                    models=['power-law'])
    pre = X <= drop
    alone = fitting.fit_model(fitting.CURVE_FAMILIES['power-law'], X[pre], y[pre])
    np.testing.assert_allclose(result.results['power-law'].fit.params, alone.params,
                               rtol=1e-6)
    assert result.results['power-law'].jump.value == pytest.approx(3.0, abs=0.35)
    assert result.results['power-law'].jump.n_points == int((~pre).sum()) == 9


def test_lr_drop_jump_is_added_only_where_the_target_schedule_drops():
    y, drop = drop_curve(jump=3.0)
    truth = fitting.CURVE_FAMILIES['power-law'].fn(375000.0, *TRUTH['power-law'])

    dropped = fitting.forecast_curve(X, y, 375000, drop_at=drop, target_drop_at=300000)
    p = dropped.prediction()
    assert dropped.selected == 'power-law' and dropped.jump_applied
    assert p['value'] == pytest.approx(truth + 3.0, abs=0.6)
    assert p['without_jump'] == pytest.approx(truth, abs=0.6)
    assert p['lower'] < p['value'] < p['upper']

    # the same fit, a target schedule without a drop (or dropping after the target)
    for target_drop in (None, 400000):
        flat = fitting.forecast_curve(X, y, 375000, drop_at=drop, target_drop_at=target_drop)
        q = flat.prediction()
        assert not flat.jump_applied
        assert q['value'] == pytest.approx(p['without_jump'], abs=1e-9)

    # along the forecast curve: no jump before the target's drop, the jump after it
    r = dropped.results['power-law']
    xs = np.array([200000.0, 299999.0, 300001.0, 375000.0])
    with_jump, lo, hi = r.predict(xs, 300000)
    base = r.fit.predict(xs)
    np.testing.assert_allclose(with_jump - base, [0, 0, r.jump.value, r.jump.value])
    assert np.all(hi - lo > 0)


def test_ignoring_the_drop_underestimates_the_jump_free_trend():
    """Without drop handling the post-drop points bend the fit (the seed's caveat)."""
    y, drop = drop_curve(jump=3.0)
    naive = fitting.forecast_curve(X, y, 375000, models=['power-law'])
    handled = fitting.forecast_curve(X, y, 375000, drop_at=drop, models=['power-law'])
    truth = fitting.CURVE_FAMILIES['power-law'].fn(375000.0, *TRUTH['power-law'])
    assert abs(handled.prediction()['value'] - truth) < abs(
        naive.prediction()['value'] - truth)


def test_detect_lr_drop_skips_warmup_and_smooth_decay():
    iters = np.arange(0, 1000, 20) + 20.0
    lr = np.where(iters <= 100, iters / 100 * 1e-4, 1e-4)  # linear warm-up, then flat
    lr = np.where(iters > 800, 1e-5, lr)  # x0.1 after iteration 800
    assert fitting.detect_lr_drop(iters, lr) == 800.0
    cosine = 1e-4 * 0.5 * (1 + np.cos(np.pi * iters / 2000))
    assert fitting.detect_lr_drop(iters, cosine) is None


def test_errors_are_one_clear_line():
    with pytest.raises(fitting.ForecastError, match='at least 5 points.*got 4'):
        fitting.forecast_curve(X[:4], noisy('power-law', 0)[:4], 375000)
    y = noisy('power-law', 0)
    y[3] = np.nan
    with pytest.raises(fitting.ForecastError, match='NaN'):
        fitting.forecast_curve(X, y, 375000)
    with pytest.raises(fitting.ForecastError, match='x must be > 0'):
        fitting.forecast_curve(np.r_[0.0, X[1:]], noisy('power-law', 0), 375000)
    with pytest.raises(fitting.ForecastError, match='before the lr drop'):
        fitting.forecast_curve(X, noisy('power-law', 0), 375000, drop_at=X[2])
    with pytest.raises(fitting.ForecastError, match='not numeric'):
        fitting.validate_curve(['a', 'b'], [1, 2])
    with pytest.raises(fitting.ForecastError, match='unknown model'):
        fitting.forecast_curve(X, noisy('power-law', 0), 375000, models=['cubic'])
    assert issubclass(fitting.ForecastError, ValueError)


def write_wandb_csv(path, y, run='dino_b_12ep', drop_lr_at=None):
    """A W&B panel export: Step, '<run> - bbox/AP' and its __MIN/__MAX shadows."""
    with open(path, 'w', newline='') as f:
        w = csv.writer(f)
        w.writerow(['Step', f'{run} - bbox/AP', f'{run} - bbox/AP__MIN',
                    f'{run} - bbox/AP__MAX'])
        for x, v in zip(X, y):
            w.writerow([int(x), f'{v:.4f}', f'{v - 1:.4f}', f'{v + 1:.4f}'])


def test_cli_writes_json_markdown_and_png(tmp_path, capsys):
    from tools.forecast_ap import main  # noqa: E402  (the CLI, in this process)
    y, drop = drop_curve(jump=3.0)
    curve = tmp_path / 'export.csv'
    write_wandb_csv(curve, y)
    out = tmp_path / 'fc'
    rc = exit_code(main, [str(curve), '--target-epochs', '50', '--iters-per-epoch', '7500',
                          '--drop-at', str(drop), '--target-drop-epoch', '40', '--out-dir',
                          str(out)])
    assert rc == 0
    report = json.loads((out / 'forecast.json').read_text())
    assert report['target'] == 375000 and report['x_unit'] == 'iter'
    assert report['selected'] == 'power-law'
    assert report['lr_drop'] == dict(observed_at=drop, target_at=300000.0,
                                     n_points_after=9, jump=pytest.approx(3.0, abs=0.35),
                                     applied=True)
    assert set(report['models']) == set(fitting.DEFAULT_FAMILIES)
    for m in report['models'].values():
        assert m['ok'] and m['backtest_rmse'] >= 0 and set(m['prediction']) == {
            'value', 'lower', 'upper', 'without_jump'}
        assert m['params'] and len(m['covariance']) == len(m['params'])
    md = (out / 'forecast.md').read_text()
    assert '| **power-law** (selected) |' in md and 'jump added' in md
    assert (out / 'forecast.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    assert 'Forecast (power-law)' in capsys.readouterr().out


def test_cli_reports_bad_input_as_error_and_exit_2(tmp_path, capsys):
    from tools.forecast_ap import main
    curve = tmp_path / 'bad.csv'
    curve.write_text('Step,bbox/AP\n2500,30.1\n5000,abc\n7500,35.0\n')
    assert exit_code(main, [str(curve), '--target-iter', '375000']) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith('error: ')
    assert "'bbox/AP' row 3: not a number: 'abc'" in err[0]


def test_cli_too_few_points_and_nan(tmp_path, capsys):
    from tools.forecast_ap import main
    few = tmp_path / 'few.csv'
    few.write_text('Step,bbox/AP\n2500,30.1\n5000,33.0\n7500,35.0\n')
    assert exit_code(main, [str(few), '--target-iter', '375000', '--out-dir', str(tmp_path)]) == 2
    assert 'need at least 5 points' in capsys.readouterr().err
    nan = tmp_path / 'nan.csv'
    nan.write_text('Step,bbox/AP\n' + ''.join(
        f'{int(x)},{"NaN" if i == 2 else 30 + i}\n' for i, x in enumerate(X[:8])))
    assert exit_code(main, [str(nan), '--target-iter', '375000', '--out-dir', str(tmp_path)]) == 2
    assert 'NaN' in capsys.readouterr().err
    # a column of text: named, with the offending cell
    text = tmp_path / 'text.csv'
    text.write_text('Step,note\n1,good\n2,bad\n')
    assert exit_code(main, [str(text), '--y-column', 'note', '--target-iter', '10']) == 2
    assert "column 'note' row 2: not a number: 'good'" in capsys.readouterr().err


def write_mmengine_log(work_dir, ap, iters_per_epoch=10, drop_after_epoch=11):
    """An MMEngine work dir: training lines every 5 iterations (and at each epoch's end),
    lr x0.1 after ``drop_after_epoch``, one validation line per epoch."""
    vis = work_dir / '20240101_000000' / 'vis_data'
    vis.mkdir(parents=True)
    lines = []
    for epoch, value in enumerate(ap, 1):
        for it in range((epoch - 1) * iters_per_epoch + 5, epoch * iters_per_epoch + 1, 5):
            lr = 1e-4 if epoch <= drop_after_epoch else 1e-5
            lines.append(dict(lr=lr, loss=10.0 / it, epoch=epoch, iter=it, step=it))
        lines.append({'coco/bbox_mAP': value, 'coco/bbox_mAP_50': value + 0.2,
                      'step': epoch})
    (vis / 'scalars.json').write_text(''.join(json.dumps(r) + '\n' for r in lines))


def test_mmengine_log_gives_iterations_and_the_lr_drop(tmp_path):
    epochs = np.arange(1, 13)
    ap = (fitting.CURVE_FAMILIES['power-law'].fn(epochs * 10.0, 0.6, 1.0, 0.5)
          + np.where(epochs > 11, 0.02, 0.0))
    write_mmengine_log(tmp_path, ap)
    curve = fitting.load_curve(str(tmp_path))
    assert curve.x_unit == 'iter' and curve.iters_per_epoch == 10
    np.testing.assert_allclose(curve.x, epochs * 10.0)
    np.testing.assert_allclose(curve.y, 100 * ap)  # percent
    assert curve.lr_drop_at == 110.0  # the last iteration before the lr fell

    from tools.forecast_ap import main
    out = tmp_path / 'fc'
    assert exit_code(main, [str(tmp_path), '--target-epochs', '50', '--target-drop-epoch',
                            '40', '--models', 'power-law', '--out-dir', str(out)]) == 0
    report = json.loads((out / 'forecast.json').read_text())
    assert report['target'] == 500.0 and report['lr_drop']['observed_at'] == 110.0
    assert report['lr_drop']['jump'] == pytest.approx(2.0, abs=1e-3)  # 0.02 -> 2 AP
    assert report['prediction']['value'] == pytest.approx(
        100 * fitting.CURVE_FAMILIES['power-law'].fn(500.0, 0.6, 1.0, 0.5) + 2.0, abs=1e-3)
    # --no-drop fits every point and adds nothing
    assert exit_code(main, [str(tmp_path), '--target-epochs', '50', '--no-drop', '--models',
                            'power-law', '--out-dir', str(out)]) == 0
    report = json.loads((out / 'forecast.json').read_text())
    assert report['lr_drop']['observed_at'] is None and report['n_fit_points'] == 12


def test_the_short_real_run_is_too_short_to_forecast(synthetic_run, capsys):
    from tools.forecast_ap import main
    assert exit_code(main, [synthetic_run, '--target-epochs', '16']) == 2
    assert capsys.readouterr().err.strip() == (
        'error: curve: need at least 5 points to fit and backtest the models, got 2')


def test_forecasts_stay_within_what_ap_can_be():
    """A model forecasting more than 100 AP is not selected (it printed 104.89 AP with a
    band to 125.65); bands stop at 0 and 100; when every model leaves the range, one line."""
    x = np.arange(1, 13) * 1000.0
    y = 20 + 6 * np.log(x / 1000) + x / 1000  # the log-linear fit reaches 104.6 at 60,000
    result = fitting.forecast_curve(x, y, target=60000.0)
    assert result.selected != 'log-linear'
    assert any('log-linear: forecast 104.57' in n for n in result.notes)
    for name, r in result.results.items():
        if r.fit is not None:
            value, lo, hi = r.predict(np.linspace(1000, 200000, 50), None, 0.95)
            assert (lo >= 0).all() and (hi <= 100).all() and (value <= 100).all(), name
    with pytest.raises(fitting.ForecastError, match='no model gives a forecast AP can be'):
        fitting.forecast_curve(x, 8 * np.arange(1, 13) + 1.0, target=40000.0)
