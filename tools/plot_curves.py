#!/usr/bin/env python
"""Plot learning curves of one or more runs.

    python tools/plot_curves.py WORK_DIR [WORK_DIR|scalars.json|export.csv ...] --out-dir DIR

Inputs: an MMEngine work dir (its ``<timestamp>/vis_data/scalars.json`` runs joined: a
resumed job continues where its checkpoint was, a fresh training replaces earlier runs),
a ``scalars.json``, or a W&B CSV export (``Step``/``_step`` + ``bbox/AP``, ``total_loss``,
``lr``; a panel export with several ``<run> - bbox/AP`` columns gives several runs).
Each run is one legend entry.

Writes to --out-dir:
  bbox_ap.png  validation bbox AP (percent) against epoch or iteration
  loss.png     training loss against iteration, raw and smoothed, lr dashed (right axis)
  curves.json  every plotted series (iter, epoch, value) per run
"""
import argparse
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n\n', 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('inputs', nargs='+', metavar='LOG',
                        help='work dir, scalars.json or W&B CSV export')
    parser.add_argument('--out-dir', required=True, help='folder for the PNGs')
    parser.add_argument('--labels', nargs='+', help='legend label per input')
    parser.add_argument('--metric', default='AP',
                        help='AP, AP50, AP75, APs, APm or APl (default AP)')
    parser.add_argument('--x-axis', choices=['auto', 'epoch', 'iter'], default='auto',
                        help='x of the AP plot; auto: epoch when every run has epochs')
    parser.add_argument('--iters-per-epoch', type=int,
                        help='convert iterations <-> epochs (W&B logs have iterations only)')
    parser.add_argument('--smooth', type=int,
                        help='moving-average window for the loss, in log points '
                             '(default: 1/20 of the points)')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    from analysis_tools import log_readers as readers, reports
    try:
        runs = readers.load_many(args.inputs, args.labels, args.iters_per_epoch)
        written = reports.save_curves(runs, args.out_dir, metric=args.metric,
                                      axis=args.x_axis, window=args.smooth)
    except OSError as e:  # a folder that cannot be read or written: the user's to fix
        from projects.dino_dinov2.errors import UserError
        raise UserError(f'{e.filename}: {e.strerror}' if e.filename else str(e)) from None
    for run in runs:
        ap = run.val.get(args.metric)
        last = f', last {args.metric} {ap.values[-1]:.2f}' if ap is not None and len(ap) else ''
        print(f'{run.name}: {len(ap) if ap is not None else 0} validation points, '
              f'{len(run.train["loss"]) if "loss" in run.train else 0} loss points{last} '
              f'({run.source})')
    for path in written.values():
        print(f'wrote {path}')
    return 0


if __name__ == '__main__':
    from projects.dino_dinov2.cli.error_exit import exit_on_user_error
    with exit_on_user_error():  # a bad log or CSV: 'error: ...', exit 2; a bug: exit 1
        sys.exit(main())
