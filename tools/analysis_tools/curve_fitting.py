"""Forecast validation AP at a longer schedule from a learning curve.

The seed's method, made reproducible: fit saturating models to AP against iteration by
least squares (``scipy.optimize.curve_fit``), put a 95% confidence band on each from the
parameter covariance (delta method, Student t with n - k degrees of freedom), pick the
model whose extrapolation held up best on the curve's own tail (backtest: fit the early
part, score on the held-out later points), and extrapolate to the target iteration.

A learning-rate drop lifts AP in a step the smooth models cannot follow (the seed's
"little bump at the end"). With a drop at ``drop_at``, models are fitted to the points up
to the drop only; the jump is the mean residual of the points after it, and is added to
the forecast only where the *target* schedule drops too (``target_drop_at``). The band of
that forecast is the delta method applied to ``f(x_t) + mean(y_post - f(x_post))``.

The curve families are :data:`CURVE_FAMILIES`. Only numpy/scipy: importable without torch
or mmdet. Reports (markdown, plots): :mod:`.reports`.
"""
from __future__ import annotations

import os.path as osp
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from projects.dino_dinov2.errors import UserError, first_line


AP_RANGE = (0.0, 100.0)  # what AP (in percent) can be: forecasts and bands stay inside


class ForecastError(UserError, ValueError):
    """A curve that cannot be forecast (too few points, NaN, bad x, ...)."""


# ---------------------------------------------------------------------------- models

def _log(x: np.ndarray) -> np.ndarray:
    return np.log(x)


def _lstsq(design: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.linalg.lstsq(design, y, rcond=None)[0]


@dataclass(frozen=True)
class CurveModel:
    """A parametric AP(x) model: value, Jacobian and starting points for the fit.

    ``fn(x, *p)`` -> (n,), ``jac(x, *p)`` -> (n, k); ``starts(x, y)`` -> list of p0.
    """
    name: str
    formula: str
    param_names: Tuple[str, ...]
    fn: Callable
    jac: Callable
    starts: Callable
    lower: Tuple[float, ...]
    upper: Tuple[float, ...]

    @property
    def num_params(self) -> int:
        return len(self.param_names)


def _log_fn(x, a, b):
    return a * _log(x) + b


def _log_jac(x, a, b):
    return np.stack([_log(x), np.ones_like(x)], axis=1)


def _loglin_fn(x, a, b, c):
    return a * _log(x) + b * x + c


def _loglin_jac(x, a, b, c):
    return np.stack([_log(x), x, np.ones_like(x)], axis=1)


def _power_fn(x, a, b, c):
    return a - b * np.power(x, -c)


def _power_jac(x, a, b, c):
    xc = np.power(x, -c)
    return np.stack([np.ones_like(x), -xc, b * xc * _log(x)], axis=1)


def _exp_fn(x, a, b, c):
    return a - b * np.exp(-c * x)


def _exp_jac(x, a, b, c):
    e = np.exp(-c * x)
    return np.stack([np.ones_like(x), -e, b * x * e], axis=1)


def _log_starts(x, y):
    return [_lstsq(_log_jac(x, 0, 0), y)]


def _loglin_starts(x, y):
    return [_lstsq(_loglin_jac(x, 0, 0, 0), y)]


def _profile_starts(x, y, basis, rates, keep: int = 2):
    """Starts for ``a - b*basis(x, c)``: for fixed c the model is linear in (a, b), so
    solve it on a grid of c and keep the ``keep`` best (a cheap profile likelihood)."""
    scored = []
    for c in rates:
        design = np.stack([np.ones_like(x), -basis(x, c)], axis=1)
        if not np.all(np.isfinite(design)):
            continue
        ab, *_ = np.linalg.lstsq(design, y, rcond=None)
        rss = float(np.sum((design @ ab - y) ** 2))
        scored.append((rss, np.array([ab[0], ab[1], c])))
    scored.sort(key=lambda s: s[0])
    return [p for _, p in scored[:keep]]


def _power_starts(x, y):
    return _profile_starts(x, y, lambda x, c: np.power(x, -c), np.geomspace(2e-3, 5, 40))


def _exp_starts(x, y):
    xmax = float(np.max(x))
    return _profile_starts(x, y, lambda x, c: np.exp(-c * x),
                           np.geomspace(0.05, 50, 40) / xmax)


INF = np.inf
CURVE_FAMILIES: Dict[str, CurveModel] = {
    m.name: m for m in (
        CurveModel('logarithmic', 'a*log(x) + b', ('a', 'b'), _log_fn, _log_jac,
                   _log_starts, (-INF, -INF), (INF, INF)),
        CurveModel('log-linear', 'a*log(x) + b*x + c', ('a', 'b', 'c'), _loglin_fn,
                   _loglin_jac, _loglin_starts, (-INF, -INF, -INF), (INF, INF, INF)),
        CurveModel('power-law', 'a - b*x^(-c)', ('a', 'b', 'c'), _power_fn, _power_jac,
                   _power_starts, (-INF, -INF, 1e-3), (INF, INF, 10.0)),
        # Saturates exponentially: the optimistic-early, pessimistic-late alternative.
        CurveModel('exponential', 'a - b*exp(-c*x)', ('a', 'b', 'c'), _exp_fn, _exp_jac,
                   _exp_starts, (-INF, -INF, 0.0), (INF, INF, INF)),
    )
}
DEFAULT_FAMILIES = tuple(CURVE_FAMILIES)

# The fewest points a forecast needs before the drop: a 3-parameter model fitted on the
# backtest's early part needs 4 (one degree of freedom for its band) plus 1 held out.
MIN_POINTS = 5


# ---------------------------------------------------------------------------- fitting

@dataclass
class Fit:
    """A fitted model. ``cov`` is curve_fit's covariance (scaled by the residual
    variance ``rss / dof``)."""
    model: CurveModel
    params: np.ndarray
    cov: np.ndarray
    rss: float
    n: int

    @property
    def dof(self) -> int:
        return self.n - self.model.num_params

    @property
    def sigma2(self) -> float:
        return self.rss / self.dof

    def predict(self, x) -> np.ndarray:
        return self.model.fn(np.asarray(x, dtype=float), *self.params)

    def grad(self, x) -> np.ndarray:
        """d f(x) / d params, shape (n, k)."""
        return self.model.jac(np.atleast_1d(np.asarray(x, dtype=float)), *self.params)

    def std(self, x) -> np.ndarray:
        g = self.grad(x)
        return np.sqrt(np.maximum(np.einsum('ni,ij,nj->n', g, self.cov, g), 0.0))

    def t_quantile(self, level: float = 0.95) -> float:
        from scipy.stats import t
        return float(t.ppf(0.5 + level / 2, self.dof))


def fit_model(model: CurveModel, x: np.ndarray, y: np.ndarray) -> Fit:
    """Least-squares fit from each of the model's starting points; the lowest RSS wins.

    Raises :class:`ForecastError` when no start converges to a finite covariance.
    """
    import warnings

    from scipy.optimize import OptimizeWarning, curve_fit
    x = np.asarray(x, dtype=float)
    y = np.asarray(y, dtype=float)
    if len(x) <= model.num_params:
        raise ForecastError(f'{model.name}: {len(x)} points cannot fit '
                            f'{model.num_params} parameters with a confidence band '
                            f'(need {model.num_params + 1})')
    best: Optional[Fit] = None
    last_err = 'did not converge'
    for p0 in model.starts(x, y):
        p0 = np.clip(np.asarray(p0, dtype=float), np.array(model.lower) + 1e-12,
                     np.array(model.upper) - 1e-12)
        if not np.all(np.isfinite(p0)):
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter('error', OptimizeWarning)
                warnings.simplefilter('ignore', RuntimeWarning)
                params, cov = curve_fit(
                    model.fn, x, y, p0=p0, jac=model.jac, method='trf',
                    bounds=(model.lower, model.upper), x_scale='jac', max_nfev=2000)
        except (RuntimeError, ValueError, OptimizeWarning) as e:
            last_err = first_line(e)
            continue
        resid = y - model.fn(x, *params)
        rss = float(np.sum(resid ** 2))
        if not (np.all(np.isfinite(cov)) and np.isfinite(rss)):
            last_err = 'covariance could not be estimated'
            continue
        if best is None or rss < best.rss:
            best = Fit(model, params, cov, rss, len(x))
    if best is None:
        raise ForecastError(f'{model.name}: fit failed ({last_err})')
    return best


def backtest(model: CurveModel, x: np.ndarray, y: np.ndarray, holdout: int) -> float:
    """RMSE on the last ``holdout`` points of a fit to the points before them."""
    fit = fit_model(model, x[:-holdout], y[:-holdout])
    err = fit.predict(x[-holdout:]) - y[-holdout:]
    return float(np.sqrt(np.mean(err ** 2)))


def holdout_size(n: int, fraction: float) -> int:
    """Points held out by the backtest: ``round(fraction * n)``, at least 1, leaving 4."""
    return int(min(max(1, round(fraction * n)), max(1, n - (MIN_POINTS - 1))))


# ---------------------------------------------------------------------------- lr drop

def detect_lr_drop(iters: Sequence[float], lrs: Sequence[float], factor: float = 2.0
                   ) -> Optional[float]:
    """The last logged iteration before the lr first falls by ``factor`` or more
    between two consecutive log lines (a step schedule's drop; warm-up ramps and slow
    decays are not drops). None when the lr never drops so."""
    it = np.asarray(iters, dtype=float)
    lr = np.asarray(lrs, dtype=float)
    ok = np.isfinite(it) & np.isfinite(lr)
    it, lr = it[ok], lr[ok]
    order = np.argsort(it, kind='stable')
    it, lr = it[order], lr[order]
    for i in range(1, len(lr)):
        if lr[i - 1] > 0 and lr[i] * factor <= lr[i - 1]:
            return float(it[i - 1])
    return None


@dataclass
class Jump:
    """AP gained by an lr drop: mean residual of the post-drop points over the fit."""
    value: float
    n_points: int
    grad: np.ndarray  # mean d f(x_post) / d params, for the delta method


def estimate_jump(fit: Fit, x_post: np.ndarray, y_post: np.ndarray) -> Optional[Jump]:
    if len(x_post) == 0:
        return None
    resid = np.asarray(y_post, dtype=float) - fit.predict(x_post)
    return Jump(float(np.mean(resid)), len(x_post), fit.grad(x_post).mean(axis=0))


# ---------------------------------------------------------------------------- forecast

@dataclass
class ModelResult:
    model: CurveModel
    fit: Optional[Fit] = None
    backtest_rmse: Optional[float] = None
    jump: Optional[Jump] = None
    error: Optional[str] = None

    def predict(self, x, target_drop_at: Optional[float], level: float = 0.95,
                bounds: Tuple[float, float] = AP_RANGE
                ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(value, lower, upper) at ``x``, within ``bounds`` (what AP can be); the jump is
        added where x > target_drop_at."""
        x = np.atleast_1d(np.asarray(x, dtype=float))
        fit = self.fit
        value = fit.predict(x)
        g = fit.grad(x)
        extra_var = np.zeros_like(value)
        if self.jump is not None and target_drop_at is not None:
            after = x > target_drop_at
            value = value + np.where(after, self.jump.value, 0.0)
            g = np.where(after[:, None], g - self.jump.grad[None, :], g)
            extra_var = np.where(after, fit.sigma2 / self.jump.n_points, 0.0)
        var = np.einsum('ni,ij,nj->n', g, fit.cov, g) + extra_var
        half = fit.t_quantile(level) * np.sqrt(np.maximum(var, 0.0))
        lo, hi = bounds
        return (np.clip(value, lo, hi), np.clip(value - half, lo, hi),
                np.clip(value + half, lo, hi))


@dataclass
class ForecastResult:
    x: np.ndarray
    y: np.ndarray
    target: float
    level: float
    holdout: int
    drop_at: Optional[float]
    target_drop_at: Optional[float]
    results: Dict[str, ModelResult]
    selected: str
    x_unit: str = 'iter'
    notes: List[str] = field(default_factory=list)
    meta: dict = field(default_factory=dict)

    @property
    def fit_mask(self) -> np.ndarray:
        if self.drop_at is None:
            return np.ones(len(self.x), dtype=bool)
        return self.x <= self.drop_at

    @property
    def jump_applied(self) -> bool:
        return (self.target_drop_at is not None and self.target > self.target_drop_at
                and self.results[self.selected].jump is not None)

    def prediction(self, name: Optional[str] = None) -> dict:
        r = self.results[name or self.selected]
        value, lo, hi = r.predict(self.target, self.target_drop_at, self.level)
        base = float(np.clip(r.fit.predict(np.array([self.target]))[0], *AP_RANGE))
        return dict(value=float(value[0]), lower=float(lo[0]), upper=float(hi[0]),
                    without_jump=base)

    def to_dict(self) -> dict:
        models = {}
        for name, r in self.results.items():
            entry = dict(formula=r.model.formula, ok=r.fit is not None, error=r.error,
                         backtest_rmse=r.backtest_rmse)
            if r.fit is not None:
                std = np.sqrt(np.maximum(np.diag(r.fit.cov), 0.0))
                entry.update(
                    params=dict(zip(r.model.param_names, map(float, r.fit.params))),
                    param_std=dict(zip(r.model.param_names, map(float, std))),
                    covariance=r.fit.cov.tolist(), rss=r.fit.rss, dof=r.fit.dof,
                    jump=None if r.jump is None else r.jump.value,
                    prediction=self.prediction(name))
            models[name] = entry
        mask = self.fit_mask
        return dict(
            x_unit=self.x_unit, level=self.level, target=self.target,
            n_points=int(len(self.x)), n_fit_points=int(mask.sum()),
            backtest=dict(holdout=self.holdout, train_points=int(mask.sum()) - self.holdout,
                          metric='rmse'),
            lr_drop=dict(observed_at=self.drop_at, target_at=self.target_drop_at,
                         n_points_after=int((~mask).sum()),
                         jump=(None if self.results[self.selected].jump is None
                               else self.results[self.selected].jump.value),
                         applied=self.jump_applied),
            selected=self.selected, prediction=self.prediction(), models=models,
            curve=dict(x=self.x.tolist(), y=self.y.tolist()), notes=self.notes,
            **self.meta)


def validate_curve(x, y, min_points: int = MIN_POINTS, what: str = 'curve'
                   ) -> Tuple[np.ndarray, np.ndarray]:
    """Sorted float arrays; :class:`ForecastError` for NaN, x <= 0, duplicate x, or
    fewer than ``min_points`` points."""
    try:
        x = np.asarray(x, dtype=float)
        y = np.asarray(y, dtype=float)
    except (TypeError, ValueError) as e:
        raise ForecastError(f'{what}: values are not numeric ({e})') from None
    if x.shape != y.shape or x.ndim != 1:
        raise ForecastError(f'{what}: x and y must be 1-D of equal length, got '
                            f'{x.shape} and {y.shape}')
    bad = ~(np.isfinite(x) & np.isfinite(y))
    if bad.any():
        i = int(np.argmax(bad))
        raise ForecastError(f'{what}: NaN or infinite value at point {i} '
                            f'(x={x[i]}, y={y[i]}); remove or fix it')
    if np.any(x <= 0):
        raise ForecastError(f'{what}: x must be > 0 (iterations or epochs), got '
                            f'{float(x.min())}')
    order = np.argsort(x, kind='stable')
    x, y = x[order], y[order]
    if np.any(np.diff(x) == 0):
        raise ForecastError(f'{what}: duplicate x = {float(x[np.argmax(np.diff(x) == 0)])}')
    if len(x) < min_points:
        raise ForecastError(f'{what}: need at least {min_points} points to fit and '
                            f'backtest the models, got {len(x)}')
    return x, y


def forecast_curve(x: Sequence[float], y: Sequence[float], target: float,
                   drop_at: Optional[float] = None, target_drop_at: Optional[float] = None,
                   models: Sequence[str] = DEFAULT_FAMILIES, holdout_fraction: float = 0.3,
                   level: float = 0.95, parsimony: float = 0.02, x_unit: str = 'iter'
                   ) -> ForecastResult:
    """Fit every model, backtest, select, and return the forecast at ``target``.

    Args:
        x, y: the curve (x > 0, e.g. iterations; y e.g. AP in percent).
        target: where to forecast, same unit as x.
        drop_at: x of the last point trained before an lr drop; points after it only
            estimate the jump.
        target_drop_at: x after which the target schedule runs at the dropped lr; the
            jump is added beyond it. None: the target schedule does not drop.
        holdout_fraction: share of the (pre-drop) points the backtest holds out.
        parsimony: a model with fewer parameters is preferred when its backtest RMSE is
            within this relative margin of the best.
    """
    unknown = [m for m in models if m not in CURVE_FAMILIES]
    if unknown:
        raise ForecastError(f'unknown model(s) {unknown}; choose from {list(CURVE_FAMILIES)}')
    x, y = validate_curve(x, y, min_points=1)
    notes: List[str] = []
    if drop_at is not None and not np.any(x > drop_at):
        notes.append(f'no point after the lr drop at {drop_at:g}: jump not estimated')
    mask = np.ones(len(x), bool) if drop_at is None else x <= drop_at
    xf, yf = validate_curve(x[mask], y[mask], what='curve before the lr drop'
                            if drop_at is not None else 'curve')
    if target <= 0:
        raise ForecastError(f'target must be > 0, got {target}')
    if target < xf[-1]:
        notes.append(f'target {target:g} lies inside the fitted range (last point '
                     f'{xf[-1]:g})')
    h = holdout_size(len(xf), holdout_fraction)

    results: Dict[str, ModelResult] = {}
    for name in models:
        model = CURVE_FAMILIES[name]
        r = ModelResult(model)
        try:
            r.fit = fit_model(model, xf, yf)
            r.jump = estimate_jump(r.fit, x[~mask], y[~mask]) if drop_at is not None \
                else None
            r.backtest_rmse = backtest(model, xf, yf, h)
        except ForecastError as e:
            r.error = str(e)
        results[name] = r
    # a model whose forecast leaves what AP can be (0..100) is not selected
    for name, r in results.items():
        if r.fit is None:
            continue
        value = float(r.fit.predict(np.array([float(target)]))[0])
        if target_drop_at is not None and r.jump is not None and target > target_drop_at:
            value += r.jump.value
        if not AP_RANGE[0] <= value <= AP_RANGE[1]:
            r.error = (f'{name}: forecast {value:.2f} at {target:g} lies outside '
                       f'{AP_RANGE[0]:g}..{AP_RANGE[1]:g} (AP in percent): not selected')
            notes.append(r.error)
    scored = [(r.backtest_rmse, r.model.num_params, n) for n, r in results.items()
              if r.fit is not None and r.backtest_rmse is not None and r.error is None]
    if not scored:
        errors = '; '.join(r.error for r in results.values() if r.error)
        raise ForecastError(f'no model gives a forecast AP can be (fitted, backtested, within '
                            f'0..100 at the target): {errors}; is the curve AP in percent, '
                            'and long enough?')
    best = min(s[0] for s in scored)
    close = [s for s in scored if s[0] <= best * (1 + parsimony) + 1e-12]
    selected = min(close, key=lambda s: (s[1], s[0]))[2]
    if target_drop_at is not None and drop_at is None:
        notes.append('the target schedule drops the lr but the curve has no drop: '
                     'the jump cannot be estimated and is not added')
    if drop_at is not None and target_drop_at is None and np.any(~mask):
        notes.append('the curve has an lr drop but no target drop was given: the '
                     'forecast has no jump')
    return ForecastResult(x, y, float(target), level, h, drop_at, target_drop_at, results,
                          selected, x_unit=x_unit, notes=notes)


# ---------------------------------------------------------------------------- inputs

@dataclass
class CurveInput:
    """An AP curve read from a log, with what the log says about its schedule.

    ``x_unit`` is 'iter' when iterations are known (W&B logs, MMEngine logs with
    training lines), else 'epoch'. ``lr_drop_at`` is the detected drop in x units.
    """
    x: np.ndarray
    y: np.ndarray
    x_unit: str
    source: str
    name: str
    metric: str
    iters_per_epoch: Optional[int] = None
    lr_drop_at: Optional[float] = None


def load_curve(path: str, metric: str = 'AP', run: Optional[str] = None,
               iters_per_epoch: Optional[int] = None, x_column: Optional[str] = None,
               y_column: Optional[str] = None) -> CurveInput:
    """Read the AP curve to forecast from a work dir, scalars.json or CSV.

    ``y_column`` (with optional ``x_column``) reads any CSV's two columns as is; other
    inputs go through :mod:`.log_readers` (AP in percent). ``run`` picks one run of a W&B
    panel export with several.
    """
    from . import log_readers as readers
    if y_column is not None:
        return _load_csv_columns(path, x_column, y_column, iters_per_epoch)
    runs = readers.load_runs(path, iters_per_epoch=iters_per_epoch)
    if run is not None:
        match = [r for r in runs if r.name == run]
        if not match:
            raise ForecastError(f'{path}: no run {run!r} (runs: '
                                f'{", ".join(r.name for r in runs)})')
        chosen = match[0]
    else:
        with_metric = [r for r in runs if metric in r.val]
        chosen = (with_metric or runs)[0]
    series = chosen.metric(metric)
    unit = 'iter' if series.has_iters() else 'epoch'
    drop = None
    if 'lr' in chosen.train:
        lr = chosen.train['lr']
        drop_iter = detect_lr_drop(lr.iters, lr.values)
        if drop_iter is not None:
            drop = drop_iter if unit == 'iter' else (
                drop_iter / chosen.iters_per_epoch if chosen.iters_per_epoch else None)
    return CurveInput(series.x(unit).copy(), series.values.copy(), unit, path, chosen.name,
                      metric, chosen.iters_per_epoch, drop)


def _load_csv_columns(path: str, x_column: Optional[str], y_column: str,
                      iters_per_epoch: Optional[int]) -> CurveInput:
    from . import log_readers as readers
    if not path.lower().endswith('.csv'):
        raise ForecastError(f'{path}: --y-column needs a CSV file')
    header, rows = readers.read_csv_table(path)
    if y_column not in header:
        raise ForecastError(f'{path}: no column {y_column!r} (columns: {", ".join(header)})')
    xi = readers.find_step_column(header, path, x_column)
    yi = header.index(y_column)
    xs, ys = [], []
    for r_i, row in enumerate(rows, 2):
        y = readers.parse_float(row[yi] if yi < len(row) else '', path, y_column, r_i)
        if y is None:
            continue
        x = readers.parse_float(row[xi] if xi < len(row) else '', path, header[xi], r_i)
        if x is None:
            raise ForecastError(f'{path}: row {r_i}: {header[xi]!r} is empty')
        xs.append(x)
        ys.append(y)
    unit = 'epoch' if header[xi].lower() in ('epoch', 'epochs') else 'iter'
    return CurveInput(np.array(xs, float), np.array(ys, float), unit, path,
                      osp.splitext(osp.basename(path))[0], y_column, iters_per_epoch)


def to_curve_units(curve: CurveInput, iters: Optional[float] = None,
                   epochs: Optional[float] = None, what: str = 'target',
                   iters_per_epoch: Optional[int] = None) -> Optional[float]:
    """An x given in iterations or epochs, in the curve's unit (None if both None)."""
    ipe = iters_per_epoch or curve.iters_per_epoch
    if iters is not None and epochs is not None:
        raise ForecastError(f'{what}: give iterations or epochs, not both')
    if iters is not None:
        if curve.x_unit == 'iter':
            return float(iters)
        if not ipe:
            raise ForecastError(f'{what} in iterations, but the curve is in epochs and '
                                'iters per epoch is unknown: pass --iters-per-epoch')
        return float(iters) / ipe
    if epochs is not None:
        if curve.x_unit == 'epoch':
            return float(epochs)
        if not ipe:
            raise ForecastError(f'{what} in epochs, but the curve is in iterations and '
                                'iters per epoch is unknown: pass --iters-per-epoch')
        return float(epochs) * ipe
    return None
