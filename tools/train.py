#!/usr/bin/env python
"""Train a detector: ``python tools/train.py CONFIG [--work-dir DIR] [--amp] [--resume [PATH]]``.

mmdet's ``tools/train.py`` flags; see README "Flags". Launching (torchrun, SLURM), batch/lr,
W&B flags and the preemption exit code (75): docs/launching.md.
"""
import argparse
import os
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Train a dino-dinov2 detector')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--amp', action='store_true',
                        help='mixed precision (bfloat16 where supported, else float16)')
    parser.add_argument('--auto-scale-lr', nargs='?', const='linear',
                        choices=['linear', 'sqrt'],
                        help='scale the lr by total batch / base batch (linear) or its '
                             'square root (sqrt)')
    parser.add_argument('--resume', nargs='?', type=str, const='latest', metavar='PATH|auto',
                        help='resume from PATH; alone: from the latest checkpoint in the work '
                             'dir (an error when there is none); auto: from it when there is '
                             'one, else a new run (jobs that are resubmitted)')
    parser.add_argument('--batch-size', '--batch_size', type=int,
                        help='images per process (GPU); total batch = this x processes')
    parser.add_argument('--lr', type=float, help="the head's base lr (the backbone's "
                        'multiplier is kept); with --auto-scale-lr, the lr of the base batch')
    parser.add_argument('--epochs', type=float,
                        help='train this many passes over the training set, whatever loop '
                             'the config uses (an iteration schedule is converted from the '
                             'dataset size and the total batch; the lr drop keeps its place)')
    parser.add_argument('--load-from', metavar='CKPT',
                        help='fine-tune from this detector checkpoint: every tensor is '
                             'loaded; the class-dependent ones are re-initialized when the '
                             'class count differs; any other mismatch is an error')
    parser.add_argument('--seed', type=int, help='random seed')
    parser.add_argument('--deterministic', action='store_true',
                        help='deterministic mode (cuDNN), for reproducible runs')
    from projects.dino_dinov2.cli import add_common_arguments
    add_common_arguments(parser, 'the dir to save logs and models')
    tune = parser.add_argument_group(
        'fine-tuning (EMA and the best checkpoint are on by default with --data-root, off '
        'for the recipe configs)')
    tune.add_argument('--ema', action=argparse.BooleanOptionalAction, default=None,
                      help='keep an EMA of the weights (decay 0.993, 100-iteration warm-up, '
                           "RF-DETR's); validation, test and the checkpoints' state_dict use "
                           'it, the raw weights are kept too (ema_state_dict)')
    tune.add_argument('--save-best', action=argparse.BooleanOptionalAction, default=None,
                      help='keep best_coco_bbox_mAP_{iter,epoch}_N.pth, the checkpoint of the '
                           'highest validation mAP, beside the last ones (resume-safe)')
    tune.add_argument('--early-stop', type=int, metavar='N',
                      help='stop after N validations without a better bbox mAP (resume-safe; '
                           'turns --save-best on); better: higher, a tie is not')
    tune.add_argument('--early-stop-delta', type=float, default=0.0, metavar='D',
                      help='with --early-stop: better means higher than the best by more than '
                           'D (default 0)')
    tune.add_argument('--aug', choices=['recipe', 'small'], default='recipe',
                      help="recipe: the config's augmentation; small: + mild photometric "
                           'jitter, scale/translate jitter and more cropping, for datasets '
                           'under ~1,000 images (datasets/augment.py)')
    wandb = parser.add_argument_group('Weights & Biases')
    wandb.add_argument('--wandb', action='store_true', help='log to Weights & Biases')
    wandb.add_argument('--wandb-project', '--wandb_project', default='dino-dinov2')
    wandb.add_argument('--group', help='W&B group of runs')
    wandb.add_argument('--job-type', '--job_type', help='W&B job type')
    wandb.add_argument('--wandb-entity', '--wandb_entity', help='W&B user or team')
    wandb.add_argument('--wandb-mode', '--wandb_mode', choices=['online', 'offline'],
                       help='offline: upload later with `wandb sync` (default: WANDB_MODE, '
                       'else online)')
    wandb.add_argument('--wandb-resume-id', '--wandb_resume_id',
                       help='continue this W&B run (default with --resume: the run the '
                       'work dir recorded)')
    args = parser.parse_args(argv)
    for flag in ('batch_size', 'lr', 'epochs'):  # before any file is read
        value = getattr(args, flag)
        if value is not None and value <= 0:
            from projects.dino_dinov2.errors import ConfigError
            raise ConfigError(f"--{flag.replace('_', '-')} must be positive, got {value}")
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    return args


def main(argv=None):
    args = parse_args(argv)
    from mmengine.runner import Runner
    from mmengine.registry import RUNNERS

    from projects.dino_dinov2 import cli

    cfg = cli.load_config(args.config, args.cfg_options)
    cli.set_work_dir(cfg, args.work_dir, args.config)
    files = cli.dataset_files(args)
    dataset = None
    if files is not None:  # --data-root / --train-ann ...: the user's own data and classes
        line, dataset = cli.use_dataset(cfg, args.data_root, files)
        cli.log_at_start(cfg, line)
    cli.check_data_paths(cfg, ['train_dataloader'] + (['val_dataloader']
                                                      if cfg.get('val_cfg') else []))
    cli.check_config_device(cfg)
    launch = cli.setup_launcher(cfg, args.launcher)  # process group before the Runner
    if launch.distributed:
        cli.log_at_start(cfg, launch.describe())
    if args.amp:
        cli.enable_amp(cfg)
    if args.seed is not None:
        cfg.randomness = dict(cfg.get('randomness', None) or {}, seed=args.seed)
    if args.deterministic:
        cfg.randomness = dict(cfg.get('randomness', None) or {}, deterministic=True)
    batch_lr = cli.apply_batch_and_lr(cfg, args.batch_size, args.lr, args.auto_scale_lr,
                                      launch.world_size)
    cli.log_at_start(cfg, cli.schedule_for_run(
        cfg, batch_lr, args.epochs, dataset, cli.sets_schedule(args.cfg_options)))
    cli.log_batch_and_lr(cfg, batch_lr)
    for line in cli.apply_run_options(cfg, own_data=files is not None, ema=args.ema,
                                      save_best=args.save_best,
                                      early_stop=args.early_stop,
                                      early_stop_delta=args.early_stop_delta, aug=args.aug):
        cli.log_at_start(cfg, line)
    load_from = args.load_from or cfg.get('load_from', None)
    if load_from and args.resume is None:  # fine-tuning: checked, class-aware loading
        cli.check_checkpoint_file(load_from)
        cli.enable_fine_tuning(cfg, load_from)
    cli.set_resume(cfg, args.resume)
    if args.wandb:
        cli.enable_wandb(cfg, project=args.wandb_project, group=args.group,
                         job_type=args.job_type, entity=args.wandb_entity,
                         mode=args.wandb_mode, resume_id=args.wandb_resume_id,
                         resume=args.resume is not None)
    cli.enable_preemption(cfg)  # SIGTERM/SIGUSR1: checkpoint, exit 75 (docs/launching.md)

    cli.install_checkpoint_loader()  # weights_only=True with mmengine's classes allowed
    runner = Runner.from_cfg(cfg) if 'runner_type' not in cfg else RUNNERS.build(cfg)
    # checkpoints that do not fit this config's model: one line now, not after the start
    cli.check_run_checkpoints(runner, load_from if args.resume is None else None)
    try:
        runner.train()
    finally:
        cli.release_dataloader_workers(runner)


# the package's (engine.PREEMPTED_EXIT_CODE, INTERRUPTED_EXIT_CODE): importing it takes seconds
PREEMPTED_EXIT_CODE, INTERRUPTED_EXIT_CODE = 75, 130


def exit_on_stop_signals():
    """Until the run's PreemptionHook takes the signals over (when training starts), a stop
    signal exits at once, 75 (SIGTERM, SIGUSR1) or 130 (Ctrl-C): nothing was trained,
    nothing to save. (Python's default for SIGUSR1 kills the process: a preemption during
    the start-up seen as a crash; for Ctrl-C it prints a traceback.)"""
    import signal

    def stop(signum, frame):
        code = INTERRUPTED_EXIT_CODE if signum == signal.SIGINT else PREEMPTED_EXIT_CODE
        print(f'Stopped by {signal.Signals(signum).name} while not training: nothing to '
              f'save; exiting with code {code}.', file=sys.stderr, flush=True)
        raise SystemExit(code)

    for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT):
        signal.signal(sig, stop)


if __name__ == '__main__':
    exit_on_stop_signals()  # first: the imports below take seconds
    from projects.dino_dinov2.cli.error_exit import exit_on_user_error
    with exit_on_user_error():  # bad data/config/checkpoint: 'error: ...', exit 2
        main()
