"""Log readers: MMEngine logs and W&B CSV exports as learning curves (:class:`RunLog`).

Two sources, one model (:class:`RunLog`):

- MMEngine's ``<work_dir>/<timestamp>/vis_data/scalars.json`` (JSON lines; a work dir's
  runs are joined, so a job resumed after preemption reads as one curve). Training
  lines hold ``loss``, ``lr``, ``iter`` (global, 1-based), ``epoch`` (epoch loops only)
  and ``step``; validation lines hold ``coco/bbox_mAP``, ``coco/bbox_mAP_50``, ... and
  ``step`` (the epoch for epoch loops, the iteration otherwise). Keys may carry a
  ``train/``/``val/`` prefix (``log_with_hierarchy=True``).
- W&B CSV exports, either a panel export (``Step``, ``<run> - bbox/AP``,
  ``<run> - bbox/AP__MIN``, ...; one run per ``<run> -`` prefix) or a history export
  (``_step``, ``bbox/AP``, ``total_loss``, ``lr``); detectron2/detrex metric names.

AP is kept in percent: mmdet's ``coco/bbox_mAP`` (a fraction) is multiplied by 100,
detectron2's ``bbox/AP`` already is a percentage, so runs of both can share a plot.
Nothing here imports torch or mmdet.
"""
from __future__ import annotations

import csv
import glob
import json
import math
import os
import os.path as osp
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from projects.dino_dinov2.errors import UserError


class CurveDataError(UserError, ValueError):
    """A log or CSV that cannot be read as learning curves (message names file and key)."""


# Canonical metric names -> mmdet (fraction) and detectron2 (percent) spellings.
MMDET_AP_KEYS = {
    'coco/bbox_mAP': 'AP', 'coco/bbox_mAP_50': 'AP50', 'coco/bbox_mAP_75': 'AP75',
    'coco/bbox_mAP_s': 'APs', 'coco/bbox_mAP_m': 'APm', 'coco/bbox_mAP_l': 'APl',
}
D2_AP_KEYS = {
    'bbox/AP': 'AP', 'bbox/AP50': 'AP50', 'bbox/AP75': 'AP75',
    'bbox/APs': 'APs', 'bbox/APm': 'APm', 'bbox/APl': 'APl',
}
LOSS_KEYS = ('loss', 'total_loss')  # mmengine, detectron2
LR_KEYS = ('lr', )
STEP_COLUMNS = ('step', '_step', 'iteration', 'iter', 'global_step', 'trainer/global_step')


@dataclass
class Series:
    """One curve. ``iters``/``epochs`` are NaN where the log does not say.

    Attributes:
        iters: global training iteration (1-based, after that many optimizer steps).
        epochs: epoch (may be fractional for W&B logs converted with iters per epoch).
        values: the metric (AP in percent, loss, lr).
    """
    iters: np.ndarray
    epochs: np.ndarray
    values: np.ndarray

    def __len__(self) -> int:
        return len(self.values)

    def has_iters(self) -> bool:
        return len(self) > 0 and bool(np.all(np.isfinite(self.iters)))

    def has_epochs(self) -> bool:
        return len(self) > 0 and bool(np.all(np.isfinite(self.epochs)))

    def x(self, axis: str) -> np.ndarray:
        """``axis`` 'iter' or 'epoch'."""
        return self.iters if axis == 'iter' else self.epochs

    def to_dict(self) -> dict:
        return dict(iter=_json_list(self.iters), epoch=_json_list(self.epochs),
                    value=_json_list(self.values))


@dataclass
class RunLog:
    """The curves of one training run.

    Attributes:
        name: legend label.
        source: the file read.
        val: canonical metric name ('AP', 'AP50', ...) -> series (AP in percent).
        train: 'loss', 'lr' and any other training scalars -> series.
        iters_per_epoch: from the log (epoch loops) or given by the user; None if unknown.
    """
    name: str
    source: str
    val: Dict[str, Series] = field(default_factory=dict)
    train: Dict[str, Series] = field(default_factory=dict)
    iters_per_epoch: Optional[int] = None
    sources: List[str] = field(default_factory=list)

    def metric(self, name: str = 'AP') -> Series:
        if name not in self.val:
            have = ', '.join(sorted(self.val)) or 'none'
            raise CurveDataError(f'{self.source}: no validation metric {name!r} '
                                 f'(metrics found: {have})')
        return self.val[name]

    def set_iters_per_epoch(self, iters_per_epoch: int) -> None:
        """Fill in the missing axis of every series (iters <-> epochs)."""
        if iters_per_epoch <= 0:
            raise CurveDataError(f'iters per epoch must be positive, got {iters_per_epoch}')
        self.iters_per_epoch = int(iters_per_epoch)
        for s in list(self.val.values()) + list(self.train.values()):
            missing_it = ~np.isfinite(s.iters)
            s.iters[missing_it] = s.epochs[missing_it] * iters_per_epoch
            missing_ep = ~np.isfinite(s.epochs)
            s.epochs[missing_ep] = s.iters[missing_ep] / iters_per_epoch

    def to_dict(self) -> dict:
        return dict(name=self.name, source=self.source, sources=self.sources or [self.source],
                    iters_per_epoch=self.iters_per_epoch,
                    val={k: v.to_dict() for k, v in self.val.items()},
                    train={k: v.to_dict() for k, v in self.train.items()})


def _json_list(a: np.ndarray) -> list:
    return [float(v) if np.isfinite(v) else None for v in np.asarray(a, dtype=float)]


def _series(iters: Sequence[float], epochs: Sequence[float], values: Sequence[float]
            ) -> Series:
    return Series(np.asarray(iters, dtype=float), np.asarray(epochs, dtype=float),
                  np.asarray(values, dtype=float))


# ---------------------------------------------------------------------------- finding

def find_scalars_json(work_dir: str) -> str:
    """The newest ``<timestamp>/vis_data/scalars.json`` of an MMEngine work dir (also
    accepts a timestamp folder itself). Timestamps sort in time order; ties go to the
    newer file."""
    candidates = _scalars_candidates(work_dir)
    if not candidates:
        raise CurveDataError(f'{work_dir}: no */vis_data/scalars.json inside; pass an '
                             'MMEngine work dir, a scalars.json or a W&B CSV')
    return max(candidates, key=_run_order)


def _run_name_for(path: str, scalars: str) -> str:
    if osp.isdir(path):
        return osp.basename(osp.normpath(path))
    # <work_dir>/<timestamp>/vis_data/scalars.json -> work dir name
    parts = osp.normpath(osp.abspath(scalars)).split(os.sep)
    if len(parts) >= 4 and parts[-2] == 'vis_data':
        return parts[-4]
    return osp.splitext(osp.basename(path))[0]


# ---------------------------------------------------------------------------- MMEngine

def _strip_prefix(key: str) -> str:
    for prefix in ('train/', 'val/'):
        if key.startswith(prefix):
            return key[len(prefix):]
    return key


def infer_iters_per_epoch(iters: Sequence[float], epochs: Sequence[float]) -> Optional[int]:
    """Iterations per epoch consistent with every (global iter, epoch) training line.

    A line logged at global iteration ``i`` in epoch ``e`` (both 1-based) satisfies
    ``(e - 1) * n < i <= e * n``. MMEngine logs the last iteration of every epoch, so
    the smallest ``n`` allowed is the answer; None when no ``n`` fits (e.g. a resumed run
    that changed the batch size).
    """
    it = np.asarray(iters, dtype=float)
    ep = np.asarray(epochs, dtype=float)
    ok = np.isfinite(it) & np.isfinite(ep) & (ep >= 1)
    if not ok.any():
        return None
    it, ep = it[ok], ep[ok]
    n = int(math.ceil(np.max(it / ep) - 1e-9))
    if n < 1 or np.any((ep - 1) * n >= it):
        return None
    return n


def _read_scalar_rows(path: str) -> Tuple[List[dict], List[dict]]:
    """(training rows, validation rows) of a scalars.json, prefixes stripped."""
    train_rows, val_rows = [], []
    with open(path) as f:
        lines = f.read().splitlines()
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            if lineno == len(lines):  # a line still being written by a live run
                break
            raise CurveDataError(f'{path}:{lineno}: not a JSON line ({e.msg})') from None
        if not isinstance(row, dict):
            raise CurveDataError(f'{path}:{lineno}: expected a JSON object')
        row = {_strip_prefix(k): v for k, v in row.items()}
        if any(k in row for k in MMDET_AP_KEYS):
            val_rows.append(row)
        elif any(k in row for k in LOSS_KEYS + LR_KEYS):
            train_rows.append(row)
    return train_rows, val_rows


def load_scalars_json(path: str, name: Optional[str] = None) -> RunLog:
    """Read MMEngine's ``vis_data/scalars.json`` (one JSON object per line)."""
    train_rows, val_rows = _read_scalar_rows(path)
    return _run_from_rows(train_rows, val_rows, path, name or _run_name_for(path, path))


def load_work_dir(work_dir: str, name: Optional[str] = None) -> RunLog:
    """The curves of a work dir, its runs (``<timestamp>/vis_data/scalars.json``) joined.

    A resumed job (e.g. after preemption) logs into a new timestamp folder starting at
    the checkpoint's iteration; each later run replaces what earlier runs logged from its
    first iteration on. A fresh training restarts at iteration 1 and so replaces all
    earlier ones: the newest run always wins.
    """
    files = sorted(_scalars_candidates(work_dir), key=_run_order)
    if not files:
        raise CurveDataError(f'{work_dir}: no */vis_data/scalars.json inside; pass an '
                             'MMEngine work dir, a scalars.json or a W&B CSV')
    train_rows: List[dict] = []
    val_rows: List[dict] = []
    for path in files:
        t_rows, v_rows = _read_scalar_rows(path)
        if t_rows:
            start_iter = min(_row_iter(r) for r in t_rows)
            by_epoch = all('epoch' in r for r in t_rows)
            start_epoch = min(r['epoch'] for r in t_rows) if by_epoch else None
            train_rows = [r for r in train_rows if _row_iter(r) < start_iter]
            val_rows = [r for r in val_rows if r.get('step', 0) < (
                start_epoch if by_epoch else start_iter)]
        steps = {r.get('step') for r in v_rows}
        val_rows = [r for r in val_rows if r.get('step') not in steps] + v_rows
        train_rows += t_rows
    run = _run_from_rows(train_rows, val_rows, files[-1],
                         name or osp.basename(osp.normpath(work_dir)))
    run.sources = files
    return run


def _row_iter(row: dict) -> float:
    v = row.get('iter', row.get('step'))
    return float(v) if _is_number(v) else math.inf


def _scalars_candidates(work_dir: str) -> List[str]:
    return (glob.glob(osp.join(work_dir, '*', 'vis_data', 'scalars.json'))
            + glob.glob(osp.join(work_dir, 'vis_data', 'scalars.json'))
            + glob.glob(osp.join(work_dir, 'scalars.json')))


def _run_order(path: str):
    """Timestamp folders (``YYYYmmdd_HHMMSS``) sort in time order; then file age."""
    return osp.basename(osp.dirname(osp.dirname(path))), osp.getmtime(path)


def _run_from_rows(train_rows: List[dict], val_rows: List[dict], path: str,
                   name: str) -> RunLog:
    if not train_rows and not val_rows:
        raise CurveDataError(f'{path}: no training (loss, lr) or validation '
                             '(coco/bbox_mAP) lines')
    by_epoch = any('epoch' in r for r in train_rows)
    run = RunLog(name=name, source=path)

    t_iters = [_num(r.get('iter', r.get('step')), path, 'iter') for r in train_rows]
    t_epochs = [_num(r.get('epoch', math.nan), path, 'epoch') for r in train_rows]
    keys: List[str] = []
    for r in train_rows:
        keys += [k for k in r if k not in keys]
    for key in keys:
        if key in ('iter', 'epoch', 'step', 'time', 'data_time', 'eta', 'memory'):
            continue
        idx = [i for i, r in enumerate(train_rows) if key in r]
        if not idx or not all(_is_number(train_rows[i][key]) for i in idx):
            continue
        run.train[key] = _series([t_iters[i] for i in idx], [t_epochs[i] for i in idx],
                                 [_num(train_rows[i][key], path, key) for i in idx])
    if 'total_loss' in run.train and 'loss' not in run.train:
        run.train['loss'] = run.train.pop('total_loss')

    for key, canon in MMDET_AP_KEYS.items():
        rows = [r for r in val_rows if key in r]
        if not rows:
            continue
        steps = [_num(r.get('step'), path, 'step') for r in rows]
        vals = [_ap_percent(_num(r[key], path, key)) for r in rows]
        if by_epoch:
            run.val[canon] = _series([math.nan] * len(rows), steps, vals)
        else:
            run.val[canon] = _series(steps, [math.nan] * len(rows), vals)

    if by_epoch and 'loss' in run.train:
        ipe = infer_iters_per_epoch(run.train['loss'].iters, run.train['loss'].epochs)
        if ipe:
            run.set_iters_per_epoch(ipe)
    return run


def _ap_percent(v: float) -> float:
    """mmdet's AP fraction in percent; COCO's -1 (no object of that size) -> NaN."""
    return math.nan if v < 0 else 100.0 * v


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _num(v, path: str, key: str) -> float:
    if v is None:
        return math.nan
    if not _is_number(v):
        raise CurveDataError(f'{path}: {key!r} is not a number: {v!r}')
    return float(v)


# ---------------------------------------------------------------------------- W&B CSV

def parse_float(text: str, path: str, column: str, row: int) -> float:
    """A CSV cell as float, None for an empty cell; anything else is an error."""
    text = text.strip()
    if text == '':
        return None  # type: ignore[return-value]
    try:
        return float(text)
    except ValueError:
        raise CurveDataError(f'{path}: column {column!r} row {row}: not a number: '
                             f'{text!r}') from None


def _canonical_column(col: str) -> Optional[str]:
    if col in D2_AP_KEYS:
        return D2_AP_KEYS[col]
    if col in MMDET_AP_KEYS:  # an mmdet run logged to W&B keeps its own key
        return MMDET_AP_KEYS[col]
    for key in ('val/' + k for k in MMDET_AP_KEYS):
        if col == key:
            return MMDET_AP_KEYS[key[4:]]
    if col in ('loss', 'total_loss', 'train/loss'):
        return 'loss'
    if col in ('lr', 'train/lr'):
        return 'lr'
    return None


def read_csv_table(path: str) -> tuple:
    """(header, rows) of a CSV file; raises CurveDataError on an empty file."""
    with open(path, newline='') as f:
        reader = csv.reader(f)
        try:
            header = next(reader)
        except StopIteration:
            raise CurveDataError(f'{path}: empty CSV file') from None
        rows = [r for r in reader if any(c.strip() for c in r)]
    return [h.strip() for h in header], rows


def find_step_column(header: Sequence[str], path: str, x_column: Optional[str] = None) -> int:
    if x_column is not None:
        if x_column not in header:
            raise CurveDataError(f'{path}: no column {x_column!r} (columns: '
                                 f'{", ".join(header)})')
        return header.index(x_column)
    lowered = [h.lower() for h in header]
    for name in STEP_COLUMNS:
        if name in lowered:
            return lowered.index(name)
    raise CurveDataError(f'{path}: no step column (one of {", ".join(STEP_COLUMNS)}); '
                         'name it with --x-column')


def load_wandb_csv(path: str, iters_per_epoch: Optional[int] = None,
                   name: Optional[str] = None) -> List[RunLog]:
    """Runs of a W&B CSV export (x = ``Step``/``_step``, an iteration count).

    A panel export with several ``<run> - bbox/AP`` columns gives one run per prefix.
    ``__MIN``/``__MAX`` columns (W&B's range shading) are ignored; empty cells (a metric
    not logged at that step) are skipped; a cell that is not a number is an error.
    """
    header, rows = read_csv_table(path)
    step_idx = find_step_column(header, path)
    runs: Dict[str, Dict[str, tuple]] = {}
    for idx, col in enumerate(header):
        if idx == step_idx or col.endswith('__MIN') or col.endswith('__MAX'):
            continue
        run_name, metric = (col.split(' - ', 1) if ' - ' in col else ('', col))
        canon = _canonical_column(metric.strip())
        if canon is None:
            continue
        xs, ys = [], []
        for r_i, row in enumerate(rows, 2):
            if idx >= len(row):
                continue
            y = parse_float(row[idx], path, col, r_i)
            if y is None:
                continue
            x = parse_float(row[step_idx] if step_idx < len(row) else '', path,
                            header[step_idx], r_i)
            if x is None:
                raise CurveDataError(f'{path}: row {r_i}: {col!r} has a value but the '
                                     f'step column {header[step_idx]!r} is empty')
            xs.append(x)
            ys.append(y)
        if metric.strip() in MMDET_AP_KEYS or metric.strip().startswith('val/coco/'):
            ys = [_ap_percent(y) for y in ys]
        elif canon not in ('loss', 'lr'):
            ys = [math.nan if y < 0 else y for y in ys]
        runs.setdefault(run_name.strip(), {})[canon] = (xs, ys)
    if not runs:
        raise CurveDataError(f'{path}: no AP (bbox/AP, coco/bbox_mAP), loss (total_loss, '
                             f'loss) or lr column among: {", ".join(header)}')
    out = []
    default = name or osp.splitext(osp.basename(path))[0]
    for run_name, metrics in runs.items():
        run = RunLog(name=run_name or default, source=path)
        for canon, (xs, ys) in metrics.items():
            s = _series(xs, [math.nan] * len(xs), ys)
            (run.train if canon in ('loss', 'lr') else run.val)[canon] = s
        if iters_per_epoch:
            run.set_iters_per_epoch(iters_per_epoch)
        out.append(run)
    return out


# ---------------------------------------------------------------------------- dispatch

def load_runs(path: str, iters_per_epoch: Optional[int] = None,
              name: Optional[str] = None) -> List[RunLog]:
    """Runs in ``path``: an MMEngine work dir (newest run), a scalars.json or a W&B CSV."""
    if not osp.exists(path):
        raise CurveDataError(f'{path}: no such file or directory')
    if osp.isdir(path):
        runs = [load_work_dir(path, name=name)]
    elif path.lower().endswith('.csv'):
        runs = load_wandb_csv(path, iters_per_epoch=iters_per_epoch, name=name)
    else:
        runs = [load_scalars_json(path, name=name)]
    if iters_per_epoch:
        for run in runs:
            run.set_iters_per_epoch(iters_per_epoch)
    return runs


def load_many(paths: Iterable[str], labels: Optional[Sequence[str]] = None,
              iters_per_epoch: Optional[int] = None) -> List[RunLog]:
    """Runs of several inputs, names made unique for the legend."""
    paths = list(paths)
    if labels is not None and len(labels) != len(paths):
        raise CurveDataError(f'{len(labels)} labels for {len(paths)} inputs')
    runs: List[RunLog] = []
    for i, path in enumerate(paths):
        runs += load_runs(path, iters_per_epoch, labels[i] if labels else None)
    seen: Dict[str, int] = {}
    for run in runs:
        if run.name in seen:
            seen[run.name] += 1
            run.name = f'{run.name} ({seen[run.name]})'
        else:
            seen[run.name] = 1
    return runs
