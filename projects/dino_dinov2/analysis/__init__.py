"""Analysis tools: learning curves, AP forecast, training benchmark, inference demo.

- :mod:`.log_readers`: MMEngine ``scalars.json`` logs and W&B CSV exports as learning
  curves (``RunLog``).
- :mod:`.curve_fitting`: saturating curve families fitted to AP, backtested,
  extrapolated with a 95% band and the lr drop's jump.
- :mod:`.reports`: AP/loss plots (``tools/plot_curves.py``) and the forecast's markdown,
  plot and JSON (``tools/forecast_ap.py``).
- :mod:`.benchmark`, :mod:`.kernel_benchmark`: time per training iteration, peak memory,
  inference speed; the deformable-attention kernels (``tools/benchmark.py``).
- :mod:`.inference`: boxes as JSON and drawn images for a checkpoint (``tools/infer.py``).

The first three need only numpy, scipy and matplotlib and are imported here; the others
import torch and mmdet, so import them explicitly.
"""
from . import curve_fitting, log_readers, reports
from .curve_fitting import ForecastError, forecast_curve, load_curve
from .log_readers import CurveDataError, RunLog, Series, load_many, load_runs
from .reports import save_curves, write_report

__all__ = [
    'curve_fitting', 'log_readers', 'reports', 'CurveDataError', 'RunLog', 'Series',
    'load_many', 'load_runs', 'save_curves', 'ForecastError', 'forecast_curve', 'load_curve',
    'write_report'
]
