#!/usr/bin/env python
"""Export a trained detector to ONNX: one graph from image to detections.

    python tools/export.py CONFIG CHECKPOINT --out model.onnx [--shape 512x512] [--batch N]
        [--dynamic-batch] [--simplify] [--check IMAGE ...]
    python tools/export.py CONFIG CHECKPOINT --out model_int8.onnx --int8 --calib DIR
        [--calib-images 300] [--max-drop 0.01 [--val DATA_ROOT] [--val-images N]]
    python tools/export.py CONFIG CHECKPOINT --out model_int8.xml --int8 --calib DIR
        --backend openvino [--deform-attn openvino] [--max-drop ...]

Input ``images``: float32 N x 3 x H x W, RGB, 0-255, at the export size (normalized inside
the graph). Outputs ``boxes`` (N x K x 4, x1 y1 x2 y2 in input pixels), ``scores``
(N x K), ``labels`` (N x K, int64); K = the config's test_cfg.max_per_img. Beside
model.onnx, model.json: class names, input size, how an image of another size is resized
and padded, opset, the checkpoint's sha256, versions. ``--check`` runs the graph
(onnxruntime, or ``--backend openvino``) and PyTorch on the images and exits 1 if they
differ beyond the printed tolerances.

``--int8``: post-training quantization on ``--calib`` (a folder of images or a dataset
root; ``--calib-images`` of them, letterboxed as at inference): the products with learned
weights in INT8, the attention products, the final class and box layers and every other
operator in float (docs/deploy.md). ``--max-drop D`` evaluates the float32 and the INT8
graphs on ``--val`` (a dataset root, or a folder with its COCO file; default: the config's
validation set) and writes nothing, exit 1, when the INT8 bbox mAP is lower by more than D.
The quantizer is ``--backend``'s: onnxruntime's (a QDQ ``.onnx`` both runtimes run), or
OpenVINO's NNCF (``--out MODEL.xml``: OpenVINO IR, ``MODEL.bin`` beside; with
``--deform-attn openvino`` the fused sampling stays in the INT8 graph: the fastest on a CPU).
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
    parser.add_argument('--out', required=True,
                        help='ONNX file to write (.onnx; .xml with --int8 --backend openvino)')
    parser.add_argument('--shape', default='512x512', help='HEIGHTxWIDTH of the graph input')
    parser.add_argument('--batch', type=int, default=1, help='fixed batch size')
    parser.add_argument('--dynamic-batch', action='store_true',
                        help='any batch size (the batch axis is named N)')
    parser.add_argument('--simplify', action='store_true', help='simplify with onnxslim')
    parser.add_argument('--deform-attn', choices=('onnx', 'pytorch', 'openvino'),
                        default='onnx',
                        help="the deformable attention's form in the graph: 'onnx' (laid "
                        "out for the runtimes, the default), 'pytorch' (mmcv's layout) or "
                        "'openvino' (one fused node per layer, OpenVINO only, with the "
                        "project's extension; the standard graph where it cannot be built)")
    parser.add_argument('--check', nargs='+', metavar='IMAGE',
                        help='compare the graph with PyTorch on these images')
    parser.add_argument('--backend', choices=('onnxruntime', 'openvino'),
                        default='onnxruntime',
                        help='the runtime --check runs the graph in, and whose quantizer '
                        '--int8 uses (openvino: NNCF, OpenVINO IR at --out MODEL.xml)')
    parser.add_argument('--precision', choices=('f32', 'bf16'), default='f32',
                        help='with --backend openvino: its inference precision')
    int8 = parser.add_argument_group('INT8 post-training quantization')
    int8.add_argument('--int8', action='store_true',
                      help='write the INT8 graph (needs --calib)')
    int8.add_argument('--calib', metavar='SOURCE',
                      help='calibration images: a folder (searched recursively) or a '
                      'dataset root (its training images)')
    int8.add_argument('--calib-images', type=int, default=300, metavar='N',
                      help='how many calibration images (spread over the sorted list)')
    int8.add_argument('--int8-scope', choices=('default', 'products', 'everything'),
                      default='default',
                      help="what is quantized: 'default' (learned-weight products, not "
                      "the final class/box layers), 'products' (every MatMul/Gemm), "
                      "'everything' (every operator onnxruntime can quantize)")
    int8.add_argument('--max-drop', type=float, metavar='D',
                      help='accuracy gate: refuse (exit 1, nothing written) when the INT8 '
                      'bbox mAP is more than D below the float32 graph\'s')
    int8.add_argument('--val', metavar='SOURCE',
                      help='the gate\'s validation set: a dataset root (its val split) or '
                      'a folder with one COCO file beside its images (default: the '
                      'config\'s validation set)')
    int8.add_argument('--val-images', type=int, metavar='N',
                      help='evaluate the gate on the first N validation images')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, key=value')
    return parser.parse_args(argv)


def _check_flags(args) -> None:
    from projects.dino_dinov2 import deploy
    if args.int8 and not args.calib:
        raise deploy.ExportError('--int8 needs --calib DIR (the calibration images)')
    given = [f for f, v in (('--calib', args.calib), ('--max-drop', args.max_drop),
                             ('--val', args.val), ('--val-images', args.val_images))
             if v is not None]
    if given and not args.int8:
        raise deploy.ExportError(f'{given[0]} is an INT8 setting: add --int8')
    for flag in ('--val', '--val-images'):
        if getattr(args, flag[2:].replace('-', '_')) is not None and args.max_drop is None:
            raise deploy.ExportError(f'{flag} goes with --max-drop D (the accuracy gate)')
    if args.int8 and args.dynamic_batch:
        raise deploy.ExportError('--int8 is calibrated at a fixed batch: drop --dynamic-batch')
    if args.deform_attn == 'openvino' and args.int8 and args.backend != 'openvino':
        raise deploy.ExportError('--deform-attn openvino --int8: onnxruntime\'s quantizer '
                                 'cannot run the fused node; add --backend openvino (NNCF, '
                                 'OpenVINO IR at --out MODEL.xml)')
    if args.deform_attn == 'openvino' and args.check and args.backend != 'openvino':
        raise deploy.ExportError('--deform-attn openvino: the graph runs in OpenVINO only; '
                                 '--check needs --backend openvino')
    if args.int8 and args.backend == 'openvino' and not args.out.endswith('.xml'):
        raise deploy.ExportError(f'--out {args.out}: the file name must end in .xml (--int8 '
                                 '--backend openvino writes OpenVINO IR: MODEL.xml and '
                                 'MODEL.bin)')
    if args.out.endswith('.xml') and not (args.int8 and args.backend == 'openvino'):
        raise deploy.ExportError(f'--out {args.out}: OpenVINO IR is what --int8 --backend '
                                 'openvino writes; the float32 graph is ONNX (.onnx), '
                                 'which OpenVINO reads as it is')


def main(argv=None):
    args = parse_args(argv)
    from projects.dino_dinov2 import deploy
    shape = deploy.parse_shape(args.shape)
    _check_flags(args)
    deploy.onnx_export.require('onnx')
    if args.int8 or args.check:
        if args.backend == 'openvino':
            deploy.onnx_export.require('openvino', 'openvino')
            if args.int8:
                deploy.onnx_export.require('nncf', 'openvino')
        else:
            deploy.onnx_export.require('onnxruntime')
    if args.check:
        for path in args.check:  # before minutes of export: a missing image is known now
            deploy.read_image(path)
    if args.int8:
        from projects.dino_dinov2.deploy import quantize
        from projects.dino_dinov2.deploy.calibration import calibration_images
        calib = calibration_images(args.calib, args.calib_images)
        try:
            info = quantize.export_int8(
                args.config, args.checkpoint, args.out, calib, shape, args.batch,
                args.int8_scope, args.max_drop, args.val, args.val_images, args.cfg_options,
                args.deform_attn, backend=args.backend)
        except quantize.GateError as e:
            print(f'gate: float32 bbox mAP {e.float_ap:.4f}, INT8 {e.int8_ap:.4f}')
            print(f'error: {e}', file=sys.stderr)
            return 1
        gate = info['int8'].get('gate')
        if gate:
            print(f'gate: float32 bbox mAP {gate["float32_map"]:.4f}, INT8 '
                  f'{gate["int8_map"]:.4f} (drop {gate["float32_map"] - gate["int8_map"]:.4f}'
                  f' <= {gate["max_drop"]})')
    else:
        info = deploy.export(args.config, args.checkpoint, args.out, shape, args.batch,
                             args.dynamic_batch, args.simplify, args.cfg_options,
                             args.deform_attn)
    written = (f'{args.out} + {osp.splitext(args.out)[0]}.bin' if args.out.endswith('.xml')
               else args.out)
    print(f'wrote {written} ({info["bytes"] / 2 ** 20:.1f} MB, opset '
          f'{info["export"]["opset"]}, input {"x".join(map(str, info["input"]["shape"]))}, '
          f'K={info["outputs"]["K"]}, {len(info["classes"])} classes'
          + (', INT8' if args.int8 else '') + f') and {deploy.sidecar_path(args.out)}'
          + (f' in {info["seconds"]} s' if 'seconds' in info and not args.int8 else ''))
    if not args.check:
        return 0
    box_tol, score_tol, agreement = TOLERANCES['int8' if args.int8 else 'float32']
    rows, ok = deploy.check(args.config, args.checkpoint, args.out, args.check,
                            args.cfg_options, box_tol, score_tol, agreement, args.backend,
                            args.precision)
    print(f'check: {args.backend} vs PyTorch on the letterboxed images, top '
          f'{info["outputs"]["K"]}: a detection agrees when the other has it with the same '
          f'label, score within {score_tol} and box within {box_tol} px; at least '
          f'{100 * agreement:.0f}% must agree (near-tied scores may swap two queries)')
    for r in rows:
        print(f'  {r["image"]}: {100 * r["labels"]:.1f}% agree; largest differences of those: '
              f'box {r["boxes"]:.2e} px, score {r["scores"]:.2e}'
              + ('' if r['ok'] else '  <- below the agreement required'))
    return 0 if ok else 1


# --check: (box px, score, share of the top K that must agree) for the float32 graph, and
# for the INT8 one (whose AP is its real test: --max-drop)
TOLERANCES = {'float32': (0.05, 1e-4, 0.98), 'int8': (2.0, 0.05, 0.5)}


if __name__ == '__main__':
    from projects.dino_dinov2.cli.error_exit import exit_on_user_error
    with exit_on_user_error():
        sys.exit(main())
