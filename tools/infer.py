#!/usr/bin/env python
"""Detect objects with a trained checkpoint; write boxes as JSON and drawn images.

    python tools/infer.py CONFIG CHECKPOINT IMAGE [IMAGE|FOLDER ...] [--out-dir DIR]
        [--score-thr 0.3]

Writes DIR/predictions.json ({images: [{image, height, width, vis, detections: [{bbox
[x0, y0, x1, y1] in pixels, score, label, label_name}]}], skipped: [{image, error}]}) and
DIR/<image name> with the boxes at or above --score-thr drawn by mmdet's
DetLocalVisualizer. A file that is not an image is skipped with a warning (one given alone:
one line, exit 2).
"""
import argparse
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))


def parse_args(argv=None):
    from mmengine.config import DictAction
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n\n', 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config', help='config file')
    parser.add_argument('checkpoint', help='checkpoint file (.pth)')
    parser.add_argument('images', nargs='+', metavar='IMAGE',
                        help='image files, or folders of them')
    parser.add_argument('--out-dir', default='work_dirs/infer', help='output folder')
    parser.add_argument('--score-thr', type=float, default=0.3,
                        help='keep and draw boxes with at least this score')
    parser.add_argument('--device', help='e.g. cpu, cuda:0 (default: cuda:0 if available)')
    parser.add_argument('--no-draw', action='store_true', help='JSON only')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, key=value')
    parser.add_argument('--backend', choices=('pytorch', 'onnxruntime', 'openvino'),
                        default='pytorch',
                        help='the checkpoint in PyTorch, or the exported graph (--onnx)')
    parser.add_argument('--onnx', metavar='MODEL.onnx',
                        help='the graph tools/export.py wrote (float32 or INT8), with '
                        '--backend onnxruntime or openvino (which also reads the '
                        'MODEL.xml of --int8 --backend openvino)')
    parser.add_argument('--precision', choices=('f32', 'bf16'), default='f32',
                        help='with --backend openvino: its inference precision')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    from projects.dino_dinov2.deploy import inference
    from projects.dino_dinov2.cli import check_device
    check_device(args.device)
    model = None
    if args.backend != 'pytorch':
        from projects.dino_dinov2.deploy import Detector, ExportError
        if not args.onnx:
            raise ExportError(f'--backend {args.backend} needs --onnx MODEL.onnx')
        model = (Detector.from_openvino(args.onnx, args.precision)
                 if args.backend == 'openvino' else Detector.from_onnx(args.onnx))
    result = inference.run_inference(
        args.config, args.checkpoint, args.images, args.out_dir,
        score_thr=args.score_thr, device=args.device, cfg_options=args.cfg_options,
        draw=not args.no_draw, model=model)
    for entry in result['images']:
        dets = entry['detections']
        top = ', '.join(f'{d["label_name"]} {d["score"]:.2f}' for d in dets[:3])
        print(f'{entry["image"]}: {len(dets)} boxes >= {args.score_thr}'
              + (f' (top: {top})' if top else ''))
    for entry in result['skipped']:
        print(f'warning: skipped {entry["error"]}', file=sys.stderr)
    print(f'wrote {osp.join(args.out_dir, "predictions.json")}'
          + (f' ({len(result["images"])} images; {len(result["skipped"])} skipped, listed '
             'there)' if result['skipped'] else ''))
    return 0


if __name__ == '__main__':
    from projects.dino_dinov2.cli.error_exit import exit_on_user_error
    with exit_on_user_error():  # bad input: 'error: ...', exit 2; a bug: exit 1
        sys.exit(main())
