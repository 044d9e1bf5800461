#!/usr/bin/env python
"""Forecast validation AP at a longer schedule.

    python tools/forecast_ap.py CURVE --target-epochs 50 --iters-per-epoch 7500 \\
        --target-drop-epoch 40 [--out-dir DIR]

CURVE: an MMEngine work dir, a scalars.json, or a CSV (W&B export with Step + bbox/AP,
or any CSV with --x-column/--y-column). x is the iteration (epochs when the log has no
iterations); AP in percent. Logarithmic, log-linear, power-law and exponential models
are fitted by least squares with a 95% band (parameter covariance, Student t); the one
with the lowest backtest error (fit the early points, score the held-out tail) is
selected. A learning-rate drop in the curve (found from the logged lr, or --drop-at) is
handled: models are fitted before it, the AP jump after it is estimated and added to
the forecast only where the target schedule drops too (--target-drop-at/-epoch).

Writes forecast.json (every model's parameters, backtest error and forecast),
forecast.md (summary table) and forecast.png to --out-dir (default CURVE's folder/forecast).
"""
import argparse
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n\n', 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('curve', help='work dir, scalars.json or CSV')
    target = parser.add_mutually_exclusive_group(required=True)
    target.add_argument('--target-iter', type=float, help='forecast at this iteration')
    target.add_argument('--target-epochs', type=float,
                        help='forecast at this many epochs (x --iters-per-epoch)')
    parser.add_argument('--iters-per-epoch', type=int,
                        help='iterations per epoch (default: from the log)')
    parser.add_argument('--drop-at', type=float,
                        help='iteration of the lr drop in the curve (default: from the lr)')
    parser.add_argument('--drop-epoch', type=float, help='... or its epoch')
    parser.add_argument('--no-drop', action='store_true',
                        help='ignore any lr drop: fit every point')
    parser.add_argument('--target-drop-at', type=float,
                        help='iteration where the target schedule drops the lr')
    parser.add_argument('--target-drop-epoch', type=float, help='... or its epoch')
    parser.add_argument('--metric', default='AP', help='AP, AP50, ... (default AP)')
    parser.add_argument('--run', help='run name in a W&B export with several runs')
    parser.add_argument('--x-column', help='CSV column of x (default Step/_step/iter)')
    parser.add_argument('--y-column', help='CSV column of AP, read as is')
    parser.add_argument('--models', nargs='+',
                        help='models to fit (default: logarithmic log-linear power-law '
                             'exponential)')
    parser.add_argument('--holdout', type=float, default=0.3,
                        help='fraction of the fitted points the backtest holds out')
    parser.add_argument('--level', type=float, default=0.95, help='band level')
    parser.add_argument('--out-dir', help='output folder')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    from analysis_tools import curve_fitting as fitting
    from analysis_tools import reports
    try:
        curve = fitting.load_curve(args.curve, args.metric, args.run, args.iters_per_epoch,
                                   args.x_column, args.y_column)
        ipe = args.iters_per_epoch
        target = fitting.to_curve_units(curve, args.target_iter, args.target_epochs,
                                        'target', ipe)
        drop = None if args.no_drop else (
            fitting.to_curve_units(curve, args.drop_at, args.drop_epoch, '--drop-at', ipe)
            or curve.lr_drop_at)
        target_drop = fitting.to_curve_units(curve, args.target_drop_at,
                                             args.target_drop_epoch, '--target-drop-at', ipe)
        result = fitting.forecast_curve(
            curve.x, curve.y, target, drop_at=drop, target_drop_at=target_drop,
            models=args.models or fitting.DEFAULT_FAMILIES, holdout_fraction=args.holdout,
            level=args.level, x_unit=curve.x_unit)
        result.meta.update(source=curve.source, run=curve.name, metric=curve.metric,
                           iters_per_epoch=ipe or curve.iters_per_epoch,
                           target_epochs=args.target_epochs)
        out_dir = args.out_dir or osp.join(
            args.curve if osp.isdir(args.curve) else osp.dirname(args.curve) or '.',
            'forecast')
        paths = reports.write_report(result, out_dir, title=f'{curve.metric} forecast: '
                                     f'{curve.name}')
    except OSError as e:  # a folder that cannot be read or written: the user's to fix
        from projects.dino_dinov2.errors import UserError
        raise UserError(f'{e.filename}: {e.strerror}' if e.filename else str(e)) from None
    print(reports.summary_markdown(result, f'{curve.metric} forecast: {curve.name}'))
    for path in paths.values():
        print(f'wrote {path}')
    return 0


if __name__ == '__main__':
    from projects.dino_dinov2.cli.error_exit import exit_on_user_error
    with exit_on_user_error():  # a bad curve: 'error: ...', exit 2; a bug: exit 1
        sys.exit(main())
