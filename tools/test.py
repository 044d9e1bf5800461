#!/usr/bin/env python
"""Evaluate a checkpoint: ``python tools/test.py CONFIG CHECKPOINT [--out F.pkl] [--show-dir D]``.

mmdet's ``tools/test.py`` flags; prints the COCO bbox metrics.
"""
import argparse
import os
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description='Test (and eval) a dino-dinov2 detector')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument('--out', help='dump predictions to a pickle file (.pkl)')
    parser.add_argument('--show', action='store_true', help='show prediction results')
    parser.add_argument('--show-dir', help='directory (inside the work dir) where painted '
                        'images are saved')
    parser.add_argument('--wait-time', type=float, default=2, help='the interval of show (s)')
    parser.add_argument('--backend', choices=('pytorch', 'onnxruntime', 'openvino'),
                        default='pytorch',
                        help='evaluate the PyTorch model, or the graph tools/export.py wrote '
                        '(--onnx, float32 or INT8) with the same dataset and metric')
    parser.add_argument('--onnx', metavar='MODEL.onnx',
                        help='the exported graph (model.json beside it), with --backend '
                        'onnxruntime or openvino; OpenVINO also reads the IR of --int8 '
                        '--backend openvino (MODEL.xml)')
    parser.add_argument('--precision', choices=('f32', 'bf16'), default='f32',
                        help='with --backend openvino: its inference precision (f32 pinned '
                        'by default; bf16 where the CPU has it)')
    from projects.dino_dinov2.cli import add_common_arguments
    add_common_arguments(parser, 'the directory to save the evaluation metrics')
    args = parser.parse_args(argv)
    if 'LOCAL_RANK' not in os.environ:
        os.environ['LOCAL_RANK'] = str(args.local_rank)
    return args


def main(argv=None):
    args = parse_args(argv)
    from mmengine.runner import Runner
    from mmengine.registry import RUNNERS

    from projects.dino_dinov2 import cli

    onnx_info = None
    if args.backend != 'pytorch':
        from projects.dino_dinov2 import deploy
        if not args.onnx:
            raise deploy.ExportError(f'--backend {args.backend} needs --onnx MODEL.onnx')
        deploy.onnx_export.require(args.backend, 'openvino' if args.backend == 'openvino'
                                   else 'deploy')
        onnx_info = deploy.read_sidecar(args.onnx)
    cfg = cli.load_config(args.config, args.cfg_options)
    cli.set_work_dir(cfg, args.work_dir, args.config)
    skipped = cli.skip_backbone_download(cfg)  # the checkpoint holds those weights
    if skipped:
        cli.log_at_start(cfg, skipped)
    files = cli.dataset_files(args)
    if files is not None:  # --data-root ...: its test split (else val), its classes
        line, _ = cli.use_dataset(cfg, args.data_root, files, test=True)
        cli.log_at_start(cfg, line)
    cli.use_checked_loading(cfg)  # bad images: one line naming the file
    launch = cli.setup_launcher(cfg, args.launcher)  # process group before the Runner
    if launch.distributed:
        cli.log_at_start(cfg, launch.describe())
    cli.check_data_paths(cfg, ['test_dataloader'])
    if onnx_info is not None:  # the graph's letterbox replaces the pipeline's resize
        from projects.dino_dinov2.deploy.runtime import prepare_graph_test
        cli.log_at_start(cfg, prepare_graph_test(cfg, args.onnx, onnx_info, args.backend))
    cli.check_checkpoint_file(args.checkpoint)  # missing or truncated: one-line error
    cfg.load_from = args.checkpoint
    if args.show or args.show_dir:
        cli.enable_visualization(cfg, args.show, args.show_dir, args.wait_time)

    cli.install_checkpoint_loader()  # weights_only=True with mmengine's classes allowed
    runner = Runner.from_cfg(cfg) if 'runner_type' not in cfg else RUNNERS.build(cfg)
    cli.check_run_checkpoints(runner, test_checkpoint=args.checkpoint)
    if onnx_info is not None:  # the graph holds the weights
        from projects.dino_dinov2.deploy.runtime import use_graph
        graph = use_graph(runner, args.onnx, onnx_info, args.backend, args.precision)
        runner.logger.info(f'graph: {graph.session.describe()}')
    if args.out is not None:
        if not args.out.endswith(('.pkl', '.pickle')):
            raise ValueError(f'--out must be a .pkl or .pickle file, got {args.out}')
        from mmdet.evaluation import DumpDetResults
        runner.test_evaluator.metrics.append(DumpDetResults(out_file_path=args.out))
    try:
        metrics = runner.test()
    finally:
        cli.release_dataloader_workers(runner)
    cli.print_metrics(metrics)
    return metrics


if __name__ == '__main__':
    from projects.dino_dinov2.cli.error_exit import exit_on_user_error
    with exit_on_user_error():  # bad data/config/checkpoint: 'error: ...', exit 2
        main()
