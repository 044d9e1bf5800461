#!/usr/bin/env python
"""Export a trained detector to ONNX: one graph from image to detections.

    python tools/export.py CONFIG CHECKPOINT --out model.onnx [--shape 512x512] [--batch N]
        [--dynamic-batch] [--simplify] [--check IMAGE ...]

Input ``images``: float32 N x 3 x H x W, RGB, 0-255, at the export size (normalized inside
the graph). Outputs ``boxes`` (N x K x 4, x1 y1 x2 y2 in input pixels), ``scores``
(N x K), ``labels`` (N x K, int64); K = the config's test_cfg.max_per_img. Beside
model.onnx, model.json: class names, input size, how an image of another size is resized
and padded, opset, the checkpoint's sha256, versions. ``--check`` runs onnxruntime and
PyTorch on the images and exits 1 if they differ beyond the printed tolerances.
"""
import argparse
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))


def parse_args(argv=None):
    from mmengine.config import DictAction
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n', 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config', help='config file')
    parser.add_argument('checkpoint', help='checkpoint file (.pth)')
    parser.add_argument('--out', required=True, help='ONNX file to write (.onnx)')
    parser.add_argument('--shape', default='512x512', help='HEIGHTxWIDTH of the graph input')
    parser.add_argument('--batch', type=int, default=1, help='fixed batch size')
    parser.add_argument('--dynamic-batch', action='store_true',
                        help='any batch size (the batch axis is named N)')
    parser.add_argument('--simplify', action='store_true', help='simplify with onnxslim')
    parser.add_argument('--check', nargs='+', metavar='IMAGE',
                        help='compare onnxruntime with PyTorch on these images')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, key=value')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    from projects.dino_dinov2 import deploy
    shape = deploy.parse_shape(args.shape)
    deploy.onnx_export.require('onnx')
    if args.check:
        deploy.onnx_export.require('onnxruntime')
        for path in args.check:  # before minutes of export: a missing image is known now
            deploy.read_image(path)
    info = deploy.export(args.config, args.checkpoint, args.out, shape, args.batch,
                         args.dynamic_batch, args.simplify, args.cfg_options)
    print(f'wrote {args.out} ({info["bytes"] / 2 ** 20:.1f} MB, opset '
          f'{info["export"]["opset"]}, input {"x".join(map(str, info["input"]["shape"]))}, '
          f'K={info["outputs"]["K"]}, {len(info["classes"])} classes) and '
          f'{deploy.sidecar_path(args.out)} in {info["seconds"]} s')
    if not args.check:
        return 0
    box_tol, score_tol, agreement = 0.05, 1e-4, 0.98
    rows, ok = deploy.check(args.config, args.checkpoint, args.out, args.check,
                            args.cfg_options, box_tol, score_tol, agreement)
    print(f'check: onnxruntime vs PyTorch on the letterboxed images, top {info["outputs"]["K"]}:'
          f' a detection agrees when the other has it with the same label, score within '
          f'{score_tol} and box within {box_tol} px; at least {100 * agreement:.0f}% must agree '
          '(near-tied scores may swap two queries)')
    for r in rows:
        print(f'  {r["image"]}: {100 * r["labels"]:.1f}% agree; largest differences of those: '
              f'box {r["boxes"]:.2e} px, score {r["scores"]:.2e}'
              + ('' if r['ok'] else '  <- below the agreement required'))
    return 0 if ok else 1


if __name__ == '__main__':
    from projects.dino_dinov2.cli.error_exit import exit_on_user_error
    with exit_on_user_error():
        sys.exit(main())
