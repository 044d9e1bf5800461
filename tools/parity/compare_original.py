#!/usr/bin/env python
"""Run this project's model on what the original's own code recorded, and compare.

    python tools/parity/compare_original.py DIR [--preset b|s|tiny] [--out table.md]

DIR is what ``tools/parity/original_outputs.py`` wrote in the original's environment
(``original.pth``, ``records.pth``). The original's weights are converted
(``tools/convert_original.py``'s code), every recorded image and the training batch go
through this project's model of the same preset, and a table prints each stage's largest
difference against its tolerance. Exit status 1 when a stage is outside its tolerance.
"""
import argparse
import os.path as osp
import sys
import time

sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('dir', help='folder with original.pth and records.pth')
    parser.add_argument('--preset', choices=('b', 's', 'tiny'),
                        help='default: the one the recording names')
    parser.add_argument('--out', help='also write the table to this file')
    args = parser.parse_args(argv)
    import torch

    import original_parity as op
    from projects.dino_dinov2.checkpoint import CheckpointError

    records_path = osp.join(args.dir, 'records.pth')
    if not osp.isfile(records_path):
        raise CheckpointError(f'{records_path} not found: run tools/parity/original_outputs.py '
                              'in the original\'s environment first')
    records = torch.load(records_path, map_location='cpu', weights_only=True)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    start = time.time()
    rows, info = op.run_records(records, osp.join(args.dir, 'original.pth'), args.preset)
    table = op.format_rows(rows)
    print(table)
    bad = [r for r in rows if not r['ok'] and not r.get('tied')]
    tied = [r for r in rows if not r['ok'] and r.get('tied')]
    print(f'\n{len(rows) - len(bad) - len(tied)} of {len(rows)} comparisons within tolerance '
          f'({info["converted"]} tensors converted; {time.time() - start:.0f} s)')
    if tied:
        print(f'{len(tied)} outside only where a float32 near-tie ranked two encoder '
              'proposals in another order; the rows "ties as the original" are the same '
              'image with those proposals in the original\'s slots')
    if args.out:
        with open(args.out, 'w') as f:
            f.write(table + '\n')
    return 1 if bad else 0


if __name__ == '__main__':
    from projects.dino_dinov2.cli.error_exit import exit_on_user_error
    with exit_on_user_error():
        sys.exit(main())
