#!/usr/bin/env python
"""Train a detector: ``python tools/train.py CONFIG [--work-dir DIR] [--amp] [--resume [PATH]]``.

mmdet's ``tools/train.py`` flags; see README "Flags".
"""
import argparse
import os
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

from mmengine.config import DictAction  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Train a dino-dinov2 detector')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--work-dir', help='the dir to save logs and models')
    parser.add_argument('--amp', action='store_true',
                        help='mixed precision (bfloat16 where supported, else float16)')
    parser.add_argument('--auto-scale-lr', nargs='?', const='linear',
                        choices=['linear', 'sqrt'],
                        help='scale the lr by total batch / base batch (linear) or its '
                             'square root (sqrt)')
    parser.add_argument('--resume', nargs='?', type=str, const='auto',
                        help='resume from PATH, or from the latest checkpoint in the work '
                             'dir when no PATH is given')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, key=value (xxx=yyy format)')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'],
                        default='none', help='job launcher')
    # torchrun passes --local-rank (torch >= 2.0), older launchers --local_rank
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args(argv)
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    return args


def main(argv=None):
    args = parse_args(argv)
    from mmengine.runner import Runner
    from mmengine.registry import RUNNERS

    from projects.dino_dinov2 import engine

    cfg = engine.load_config(args.config, args.cfg_options)
    cfg.launcher = args.launcher
    engine.set_work_dir(cfg, args.work_dir, args.config)
    if args.amp:
        engine.enable_amp(cfg)
    if args.auto_scale_lr:
        cfg.auto_scale_lr.enable = True
    engine.set_resume(cfg, args.resume)

    runner = Runner.from_cfg(cfg) if 'runner_type' not in cfg else RUNNERS.build(cfg)
    runner.train()


if __name__ == '__main__':
    main()
