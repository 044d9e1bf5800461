"""Reports: learning-curve plots (AP, loss and lr) and the AP forecast's markdown, plot and
JSON. matplotlib's Agg backend; nothing here imports torch or mmdet."""
from __future__ import annotations

import json
import math
import os
import os.path as osp
from typing import Dict, Optional, Sequence

import numpy as np

from .curve_fitting import ForecastResult
from .log_readers import CurveDataError, RunLog


def smooth(values: Sequence[float], window: int) -> np.ndarray:
    """Trailing moving average over ``window`` points, NaN-aware (NaNs are skipped)."""
    v = np.asarray(values, dtype=float)
    if window <= 1 or len(v) == 0:
        return v.copy()
    finite = np.isfinite(v)
    csum = np.concatenate([[0.0], np.cumsum(np.where(finite, v, 0.0))])
    ccnt = np.concatenate([[0], np.cumsum(finite)])
    hi = np.arange(1, len(v) + 1)
    lo = np.maximum(hi - window, 0)
    cnt = ccnt[hi] - ccnt[lo]
    with np.errstate(invalid='ignore', divide='ignore'):
        return np.where(cnt > 0, (csum[hi] - csum[lo]) / np.maximum(cnt, 1), np.nan)


def default_smooth_window(n: int) -> int:
    """About 1/20 of the points, at least 1."""
    return max(1, n // 20)


def choose_axis(runs: Sequence[RunLog], metric: str = 'AP', axis: str = 'auto') -> str:
    """'epoch' when every run's AP has epochs (auto), else 'iter'; errors name the run."""
    series = [(r, r.val[metric]) for r in runs if metric in r.val]
    if axis == 'auto':
        return 'epoch' if series and all(s.has_epochs() for _, s in series) else 'iter'
    for run, s in series:
        if axis == 'epoch' and not s.has_epochs():
            raise CurveDataError(f'{run.source}: {run.name!r} has no epochs; pass '
                                 '--iters-per-epoch or --x-axis iter')
        if axis == 'iter' and not s.has_iters():
            raise CurveDataError(f'{run.source}: {run.name!r} has no iterations; pass '
                                 '--iters-per-epoch or --x-axis epoch')
    return axis


def _pyplot():
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    return plt


def plot_ap(runs: Sequence[RunLog], metric: str = 'AP', axis: str = 'auto'):
    """Validation bbox AP (percent) against epoch or iteration; one line per run."""
    plt = _pyplot()
    axis = choose_axis(runs, metric, axis)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for run in runs:
        if metric not in run.val:
            continue
        s = run.val[metric]
        ax.plot(s.x(axis), s.values, marker='o', markersize=4, label=run.name)
    ax.set_xlabel('epoch' if axis == 'epoch' else 'iteration')
    ax.set_ylabel(f'bbox {metric} (%)')
    ax.set_title(f'Validation bbox {metric}')
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


def plot_loss(runs: Sequence[RunLog], window: Optional[int] = None, show_lr: bool = True):
    """Training loss against iteration: raw (thin) and smoothed (thick), lr dashed on a
    second axis; one colour per run."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax_lr = ax.twinx() if show_lr and any('lr' in r.train for r in runs) else None
    colours = plt.rcParams['axes.prop_cycle'].by_key()['color']
    for i, run in enumerate(r for r in runs if 'loss' in r.train):
        colour = colours[i % len(colours)]
        s = run.train['loss']
        w = window or default_smooth_window(len(s))
        ax.plot(s.iters, s.values, color=colour, alpha=0.3, linewidth=0.8,
                label=f'{run.name} (raw)', gid=f'raw:{run.name}')
        ax.plot(s.iters, smooth(s.values, w), color=colour, linewidth=1.8,
                label=f'{run.name} (smoothed, {w} pts)', gid=f'smoothed:{run.name}')
        if ax_lr is not None and 'lr' in run.train:
            lr = run.train['lr']
            ax_lr.plot(lr.iters, lr.values, color=colour, linestyle='--', linewidth=1.0,
                       label=f'{run.name} lr', gid=f'lr:{run.name}')
    ax.set_xlabel('iteration')
    ax.set_ylabel('training loss')
    ax.set_title('Training loss')
    ax.grid(True, alpha=0.3)
    handles, labels = ax.get_legend_handles_labels()
    if ax_lr is not None:
        ax_lr.set_ylabel('learning rate (dashed)')
        ax_lr.ticklabel_format(axis='y', style='sci', scilimits=(-2, 3))
        h2, l2 = ax_lr.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    # below the axes: inside, it would cover the loss or the lr line
    ax.legend(handles, labels, fontsize='small', loc='upper center',
              bbox_to_anchor=(0.5, -0.14), ncol=min(3, len(labels)) or 1)
    fig.tight_layout()
    return fig


PLOT_FILES = {
    'bbox_ap': 'bbox_ap.png',
    'loss': 'loss.png',
    'series': 'curves.json',
}


def save_curves(runs: Sequence[RunLog], out_dir: str, metric: str = 'AP',
                axis: str = 'auto', window: Optional[int] = None,
                dpi: int = 120) -> Dict[str, str]:
    """Write ``bbox_ap.png`` (if any run has AP), ``loss.png`` (if any has loss) and
    ``curves.json`` (every plotted series). Returns {kind: path}."""
    plt = _pyplot()
    has_ap = any(metric in r.val for r in runs)
    has_loss = any('loss' in r.train for r in runs)
    if not has_ap and not has_loss:
        raise CurveDataError('nothing to plot: no run has bbox AP or a training loss '
                             f'({", ".join(r.source for r in runs)})')
    os.makedirs(out_dir, exist_ok=True)
    written = {}
    if has_ap:
        fig = plot_ap(runs, metric, axis)
        written['bbox_ap'] = osp.join(out_dir, PLOT_FILES['bbox_ap'])
        fig.savefig(written['bbox_ap'], dpi=dpi)
        plt.close(fig)
    if has_loss:
        fig = plot_loss(runs, window)
        written['loss'] = osp.join(out_dir, PLOT_FILES['loss'])
        fig.savefig(written['loss'], dpi=dpi, bbox_inches='tight')
        plt.close(fig)
    written['series'] = osp.join(out_dir, PLOT_FILES['series'])
    with open(written['series'], 'w') as f:
        json.dump(dict(metric=metric, runs=[r.to_dict() for r in runs]), f, indent=1)
    return written


def _fmt(v: Optional[float], digits: int = 2) -> str:
    return '-' if v is None or not np.isfinite(v) else f'{v:.{digits}f}'


def _fmt_x(v: float, unit: str) -> str:
    return f'{v:,.0f} iterations' if unit == 'iter' else f'{v:g} epochs'


def summary_markdown(result: ForecastResult, title: str = 'AP forecast') -> str:
    d = result.to_dict()
    unit = result.x_unit
    pct = int(round(result.level * 100))
    lines = [f'# {title}', '']
    if d.get('source'):
        lines.append(f'- Curve: `{d["source"]}` ({d.get("metric", "AP")}), '
                     f'{d["n_points"]} points')
    else:
        lines.append(f'- Curve: {d["n_points"]} points')
    target = _fmt_x(result.target, unit)
    if d.get('target_epochs') is not None:
        target += f' ({d["target_epochs"]:g} epochs)'
    lines.append(f'- Target: {target}')
    drop = d['lr_drop']
    if drop['observed_at'] is not None:
        jump = _fmt(drop['jump'])
        lines.append(f'- LR drop in the curve after {_fmt_x(drop["observed_at"], unit)}: '
                     f'models fitted to the {d["n_fit_points"]} points up to it; jump '
                     f'{jump} AP from {drop["n_points_after"]} point(s) after it')
    if drop['target_at'] is not None:
        lines.append(f'- LR drop in the target schedule after '
                     f'{_fmt_x(drop["target_at"], unit)}: jump '
                     f'{"added" if drop["applied"] else "not added"}')
    lines.append(f'- Backtest: fit on the first {d["backtest"]["train_points"]}, RMSE on '
                 f'the last {d["backtest"]["holdout"]} fitted point(s)')
    p = d['prediction']
    lines += ['', f'**Forecast ({d["selected"]}): {p["value"]:.2f} AP, {pct}% band '
              f'[{p["lower"]:.2f}, {p["upper"]:.2f}]**'
              + (f' (without the jump: {p["without_jump"]:.2f})' if drop['applied'] else ''),
              '', f'| Model | Formula | Parameters | Backtest RMSE | Forecast | {pct}% band |',
              '| --- | --- | --- | --- | --- | --- |']
    for name, m in d['models'].items():
        label = f'**{name}** (selected)' if name == d['selected'] else name
        if not m['ok']:
            lines.append(f'| {label} | `{m["formula"]}` | failed: {m["error"]} | - | - | - |')
            continue
        params = ', '.join(f'{k}={v:.4g}' for k, v in m['params'].items())
        pr = m['prediction']
        lines.append(f'| {label} | `{m["formula"]}` | {params} | '
                     f'{_fmt(m["backtest_rmse"], 3)} | {pr["value"]:.2f} | '
                     f'[{pr["lower"]:.2f}, {pr["upper"]:.2f}] |')
    if result.notes:
        lines += [''] + [f'Note: {n}' for n in result.notes]
    return '\n'.join(lines) + '\n'


def plot_forecast(result: ForecastResult, title: str = 'AP forecast'):
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(8, 5))
    mask = result.fit_mask
    ax.plot(result.x[mask], result.y[mask], 'ko', markersize=4, label='fitted points')
    if (~mask).any():
        ax.plot(result.x[~mask], result.y[~mask], 'o', mfc='none', mec='k',
                markersize=6, label='after lr drop (jump only)')
    lo_x = float(min(result.x.min(), result.target))
    grid = np.linspace(lo_x, max(result.x.max(), result.target), 400)
    for name, r in result.results.items():
        if r.fit is None:
            continue
        value, lo, hi = r.predict(grid, result.target_drop_at, result.level)
        if name == result.selected:
            line, = ax.plot(grid, value, linewidth=2, label=f'{name} (selected)')
            ax.fill_between(grid, lo, hi, color=line.get_color(), alpha=0.2,
                            label=f'{int(round(result.level * 100))}% band')
            p = result.prediction()
            ax.errorbar([result.target], [p['value']],
                        yerr=[[p['value'] - p['lower']], [p['upper'] - p['value']]],
                        fmt='*', color=line.get_color(), markersize=12, capsize=4,
                        label=f'forecast {p["value"]:.2f}')
        else:
            ax.plot(grid, value, linewidth=1, linestyle='--', alpha=0.8, label=name)
    # Frame the data and the selected forecast; a diverging alternative may leave it.
    sel_value, sel_lo, sel_hi = result.results[result.selected].predict(
        grid, result.target_drop_at, result.level)
    lo_y = min(result.y.min(), np.nanmin(sel_lo))
    hi_y = max(result.y.max(), np.nanmax(sel_hi))
    pad = 0.1 * (hi_y - lo_y) + 1e-6
    ax.set_ylim(lo_y - pad, hi_y + pad)
    if result.drop_at is not None:
        ax.axvline(result.drop_at, color='gray', linestyle=':', label='lr drop (curve)')
    if result.target_drop_at is not None:
        ax.axvline(result.target_drop_at, color='gray', linestyle='-.',
                   label='lr drop (target)')
    ax.set_xlabel('iteration' if result.x_unit == 'iter' else 'epoch')
    ax.set_ylabel('bbox AP')
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize='small')
    fig.tight_layout()
    return fig


REPORT_FILES = ('forecast.json', 'forecast.md', 'forecast.png')


def write_report(result: ForecastResult, out_dir: str, title: str = 'AP forecast'
                 ) -> Dict[str, str]:
    """Write forecast.json, forecast.md and forecast.png; returns {name: path}."""
    import matplotlib.pyplot as plt
    os.makedirs(out_dir, exist_ok=True)
    paths = {name: osp.join(out_dir, name) for name in REPORT_FILES}
    with open(paths['forecast.json'], 'w') as f:
        json.dump(_json_safe(result.to_dict()), f, indent=2)
    with open(paths['forecast.md'], 'w') as f:
        f.write(summary_markdown(result, title))
    fig = plot_forecast(result, title)
    fig.savefig(paths['forecast.png'], dpi=120)
    plt.close(fig)
    return paths


def _json_safe(obj):
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, np.generic):
        return _json_safe(obj.item())
    return obj
