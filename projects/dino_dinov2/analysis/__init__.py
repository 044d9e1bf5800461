"""Analysis tools: learning curves, AP forecast, training benchmark, inference demo.

- :mod:`.curves`: read MMEngine ``scalars.json`` logs and W&B CSV exports; plot bbox AP
  and training loss (``tools/plot_curves.py``).
- :mod:`.forecast`: fit saturating models to AP, backtest, extrapolate with a 95% band
  and the lr drop's jump (``tools/forecast_ap.py``).
- :mod:`.benchmark`: time per training iteration, peak memory and inference speed for a
  grid of configs x precision x batch size (``tools/benchmark.py``).
- :mod:`.inference`: boxes as JSON and drawn images for a checkpoint (``tools/infer.py``).

``curves`` and ``forecast`` need only numpy, scipy and matplotlib and are imported here;
``benchmark`` and ``inference`` import torch and mmdet, so import them explicitly.
"""
from . import curves, forecast
from .curves import CurveDataError, RunLog, Series, load_many, load_runs, save_curves
from .forecast import ForecastError, forecast_curve, load_curve, write_report

__all__ = [
    'curves', 'forecast', 'CurveDataError', 'RunLog', 'Series', 'load_many', 'load_runs',
    'save_curves', 'ForecastError', 'forecast_curve', 'load_curve', 'write_report'
]
