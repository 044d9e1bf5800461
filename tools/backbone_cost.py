#!/usr/bin/env python
"""Parameters, backbone GFLOPs and backbone forward time of configs, side by side.

    python tools/backbone_cost.py CONFIG [CONFIG ...] [--shape 800 1333] [--iters 3]
        [--warmup 1] [--device cpu] [--threads N] [--cfg-options k=v ...]

FLOPs: mmengine's FlopAnalyzer (one multiply-add = one FLOP) on one forward of the
backbone at --shape (H W, default 800 1333, the recipe's test size); time: median of
--iters forwards of batch 1 after --warmup, in this process. Pretrained weights are not
loaded (costs do not depend on them). Prints a markdown table (the README's configs table).
"""
import argparse
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

from mmengine.config import DictAction  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n', 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('configs', nargs='+', metavar='CONFIG')
    parser.add_argument('--shape', nargs=2, type=int, default=[800, 1333], metavar=('H', 'W'))
    parser.add_argument('--iters', type=int, default=3, help='timed forwards (0: no timing)')
    parser.add_argument('--warmup', type=int, default=1)
    parser.add_argument('--device', default='cpu')
    parser.add_argument('--threads', type=int, help='torch threads on the CPU')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    from analysis_tools.model_cost import cost_table, gflops_text, measure
    if args.threads:
        torch.set_num_threads(args.threads)
    costs = []
    for config in args.configs:
        c = measure(config, tuple(args.shape), args.iters, args.warmup, args.device,
                    args.cfg_options)
        print(f'{config}: {gflops_text(c.backbone_gflops)} GFLOPs, {c.backbone_params_m:.1f} M '
              'backbone params' + (f', {c.forward_s:.2f} s/forward' if c.forward_s else ''),
              flush=True)
        costs.append(c)
    print()
    print(cost_table(costs))
    return 0


if __name__ == '__main__':
    from projects.dino_dinov2.cli.error_exit import exit_on_user_error
    with exit_on_user_error():
        sys.exit(main())
