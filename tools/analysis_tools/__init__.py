"""Measurement and analysis code behind the tools (mmdet's ``tools/analysis_tools/``
layout): no training or inference run imports it.

- :mod:`.log_readers`, :mod:`.curve_fitting`, :mod:`.reports`: learning curves (MMEngine
  ``scalars.json``, W&B CSV), the AP forecast and its plots (``tools/plot_curves.py``,
  ``tools/forecast_ap.py``);
- :mod:`.benchmark`, :mod:`.kernel_benchmark`, :mod:`.host_profile`,
  :mod:`.step_equality`, :mod:`.ema_cost`, :mod:`.model_cost`,
  :mod:`.inference_benchmark`: time, memory and host work of a training step, the
  deformable-attention kernels, inference speed (``tools/benchmark.py``,
  ``tools/backbone_cost.py``).

The tools run from ``tools/`` (``python tools/benchmark.py``), which puts this folder's
parent on ``sys.path``; the tests add it themselves.
"""
