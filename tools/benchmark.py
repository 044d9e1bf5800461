#!/usr/bin/env python
"""Benchmark training: time per iteration, peak memory, inference images/s.

    python tools/benchmark.py CONFIG [CONFIG ...] [--precision full mixed]
        [--batch-sizes 2] [--iters 20] [--warmup 5] [--real-data]
        [--baseline [CONFIG]] [--baseline-cfg-options k=v ...]
        [--extra-baseline-cfg-options k=v ...] [--out-dir DIR]

Every CONFIG x precision x batch size is measured in this process: the model is built
from the config (mmdet registries), one iteration is model.train_step (forward, loss,
backward, clipping, optimizer step). Synthetic batches by default, of --img-size (default:
the config's test Resize, 800x1333 for the recipe), or the config's train dataloader
with --real-data (data time reported apart). Pretrained backbone weights are not loaded
(timing does not depend on them) unless --pretrained.

--inference CONFIG CHECKPOINT [--shape 512x512] [--rows ...] [--calib DIR] [--check IMAGE]
[--interleave ROUNDS]
times inference instead, batch 1: PyTorch eager float32, the exported graph in onnxruntime
(this layout and the earlier one; CUDA provider on a GPU), INT8 (calibrated on --calib),
OpenVINO float32 / bf16 / INT8 where installed, each row's agreement with PyTorch; writes
inference.md.

--host-profile CONFIG [CONFIG ...] counts what the host does in one training step on the
CPU (a proxy for a GPU step: every ATen op is a kernel launch there): ATen ops per phase,
synchronising ops, pinned copies, optimizer groups, for mmdet's step as it comes and for
this project's step side by side (batch --batch-sizes, default 2; --img-size, default
256 320; --num-gt boxes, default 9 and 12); writes host_profile.md and .json.

--deform-attn times the deformable-attention implementations this install has (pytorch,
mmcv's CUDA kernel, triton) side by side, forward and forward+backward at the recipe's
shapes (float32, and bfloat16 with --precision mixed), and writes deform_attn.md.

--baseline runs a second variant cell by cell right after each candidate cell: another
config (--baseline CONFIG) and/or other settings (--baseline-cfg-options); ratios
candidate/baseline are printed pair by pair. --extra-baseline-cfg-options adds a second
baseline row (the first baseline with more settings), e.g. the original-equivalent mode
with mmcv's CUDA deformable attention next to its pure-PyTorch one.

Prints and writes (to --out-dir, default work_dirs/benchmark) benchmark.md with the
original's table | Backbone | Precision | Batch Size | Time per Iteration | Memory Usage |
(median seconds after warm-up; MiB: CUDA max allocated, or the CPU's peak resident
memory) plus details, and benchmark.json with every measurement.
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
    parser.add_argument('configs', nargs='*', metavar='CONFIG', help='config files')
    parser.add_argument('--deform-attn', action='store_true',
                        help='time the deformable-attention implementations side by side '
                             '(forward and forward+backward at the recipe\'s shapes) instead '
                             'of training steps; no CONFIG')
    parser.add_argument('--deform-attn-impls', nargs='+',
                        choices=['pytorch', 'mmcv', 'triton'],
                        help='with --deform-attn: these (default: all this install has)')
    parser.add_argument('--deform-attn-levels', nargs='+', type=int, metavar='H W',
                        help="with --deform-attn: level sizes H1 W1 H2 W2 ... (default: an "
                             "800x1333 image's 100 167 50 84 25 42 13 21)")
    parser.add_argument('--host-profile', action='store_true',
                        help="count one training step's ATen ops and synchronisations "
                        "(mmdet's step and this project's) instead of timing")
    parser.add_argument('--cpu-formulas', action='store_true',
                        help='with --host-profile: count the step as the CPU runs it (the '
                        'PyTorch formulas of deformable attention and focal loss, the '
                        'optimizer per tensor where not fused) instead of standing in the '
                        'GPU kernels')
    parser.add_argument('--inference', action='store_true',
                        help='inference latency instead: CONFIG CHECKPOINT, batch 1 at '
                             '--shape, PyTorch float32 / bfloat16, onnxruntime, TensorRT fp16 '
                             'where importable (each row in its own process)')
    parser.add_argument('--shape', default='512x512',
                        help='with --inference: HEIGHTxWIDTH of the input')
    parser.add_argument('--rows', nargs='+', metavar='ROW',
                        help='with --inference: the rows to measure (default: all of '
                        'pytorch-fp32 onnxruntime onnxruntime-gridsample onnxruntime-int8 '
                        'openvino-f32 openvino-bf16 openvino-f32-fused openvino-bf16-fused '
                        'openvino-int8 openvino-int8-fused tensorrt-fp16; also '
                        'pytorch-bf16)')
    parser.add_argument('--calib', metavar='DIR',
                        help='with --inference: calibration images for the INT8 rows')
    parser.add_argument('--calib-images', type=int, default=300,
                        help='with --inference --calib: how many calibration images')
    parser.add_argument('--check', metavar='IMAGE',
                        help='with --inference: the input image (letterboxed; default a '
                        'seeded random image) on which each row is compared with PyTorch')
    parser.add_argument('--interleave', type=int, default=0, metavar='ROUNDS',
                        help='with --inference: also run the measured rows in turn in one '
                        'process, ROUNDS rounds (for a machine whose speed drifts)')
    parser.add_argument('--labels', nargs='+', help='Backbone column label per config')
    parser.add_argument('--precision', nargs='+', default=['full', 'mixed'],
                        choices=['full', 'mixed'], help='default: full mixed')
    parser.add_argument('--batch-sizes', nargs='+', type=int, default=[2],
                        help='per-device batch sizes (default 2, as the original table)')
    parser.add_argument('--iters', type=int, default=20, help='timed iterations')
    parser.add_argument('--warmup', type=int, default=5, help='untimed iterations first')
    parser.add_argument('--infer-iters', type=int,
                        help='timed inference batches (default --iters; 0 skips)')
    parser.add_argument('--img-size', nargs='+', type=int, metavar='PX',
                        help='synthetic image size: H, or H W (default: from the config)')
    parser.add_argument('--num-gt', type=int, nargs='+', default=None,
                        help='boxes per synthetic image (default 5; --host-profile: one '
                        'number per image, default 9 12)')
    parser.add_argument('--real-data', action='store_true',
                        help="use the config's train/val dataloaders")
    parser.add_argument('--device', help='cpu or cuda[:N] (default: cuda if available)')
    parser.add_argument('--threads', type=int,
                        help='torch CPU threads (torch.set_num_threads); on a shared CPU '
                             '1 avoids spin-waiting threads')
    parser.add_argument('--pretrained', action='store_true',
                        help='load the pretrained backbone weights the config names')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override settings of every CONFIG, key=value')
    parser.add_argument('--baseline', nargs='?', const='', metavar='CONFIG',
                        help='benchmark a baseline too: CONFIG, or each CONFIG itself '
                             'when none is given (with --baseline-cfg-options)')
    parser.add_argument('--baseline-cfg-options', nargs='+', action=DictAction,
                        help='settings of the baseline variant, key=value')
    parser.add_argument('--baseline-label', help='Backbone column label of the baseline')
    parser.add_argument('--extra-baseline-cfg-options', nargs='+', action=DictAction,
                        help='a second baseline row: the baseline with these settings too, '
                             'e.g. model.deform_attn_impl=auto (the original-equivalent mode '
                             "with mmcv's CUDA kernel)")
    parser.add_argument('--extra-baseline-label',
                        help='Backbone column label of the second baseline')
    parser.add_argument('--out-dir', default='work_dirs/benchmark', help='output folder')
    args = parser.parse_args(argv)
    if not args.deform_attn and not args.configs:
        parser.error('give a CONFIG (or --deform-attn)')
    if args.inference and len(args.configs) != 2:
        parser.error('--inference takes CONFIG CHECKPOINT')
    if args.deform_attn_levels and len(args.deform_attn_levels) % 2:
        parser.error('--deform-attn-levels takes pairs H W')
    if args.labels and len(args.labels) != len(args.configs):
        parser.error(f'{len(args.labels)} --labels for {len(args.configs)} configs')
    if args.img_size and len(args.img_size) not in (1, 2):
        parser.error('--img-size takes H or H W')
    if args.baseline_cfg_options and args.baseline is None:
        args.baseline = ''
    if args.baseline == '' and not args.baseline_cfg_options:
        parser.error('--baseline without a CONFIG needs --baseline-cfg-options')
    if args.extra_baseline_cfg_options and args.baseline is None:
        parser.error('--extra-baseline-cfg-options needs --baseline')
    return args


def deform_attn_main(args) -> int:
    import os

    import torch

    from analysis_tools import kernel_benchmark as kb
    device = args.device or ('cuda' if torch.cuda.is_available() else 'cpu')
    levels = kb.RECIPE_LEVELS
    if args.deform_attn_levels:
        v = args.deform_attn_levels
        levels = tuple(zip(v[0::2], v[1::2]))
    dtypes = ['float32', 'bfloat16'] if 'mixed' in args.precision else ['float32']
    results = kb.run_kernels(device, args.deform_attn_impls, dtypes, levels,
                             batch=(args.batch_sizes or [2])[0], iters=args.iters,
                             warmup=args.warmup)
    table = kb.kernel_table(results)
    os.makedirs(args.out_dir, exist_ok=True)
    path = os.path.join(args.out_dir, 'deform_attn.md')
    with open(path, 'w') as f:
        f.write(f'# Deformable attention on {device}\n\n{table}\n')
    print()
    print(table)
    print(f'wrote {path}')
    return 0


def host_profile_main(args) -> int:
    import json
    import os
    import time

    from analysis_tools import benchmark as bm
    from analysis_tools import host_profile as hp
    from analysis_tools.step_equality import stock_mmdet
    size = tuple(args.img_size[:1] + args.img_size[-1:]) if args.img_size else (256, 320)
    num_gt = tuple(args.num_gt or (9, 12))
    batch = (args.batch_sizes or [2])[0]
    rows = {}
    for i, config in enumerate(args.configs):
        label = args.labels[i] if args.labels else osp.splitext(osp.basename(config))[0]
        ours = bm.load_variant_config(bm.Variant(config, args.cfg_options or {}),
                                      args.pretrained)
        for mode, cfg in (('mmdet step', stock_mmdet(ours)), ('this step', ours)):
            start = time.time()
            with bm.quiet_mmengine():
                rows[f'{label}, {mode}'] = hp.profile_step(
                    cfg, batch_size=batch, image_size=size, num_gt=num_gt,
                    gpu_kernels=not args.cpu_formulas, foreach=not args.cpu_formulas)
            print(f'{label}, {mode}: {time.time() - start:.0f} s', flush=True)
    sites = '\n'.join(f'- {label}: ' + ('; '.join(r['sync_sites']) or 'none')
                      for label, r in rows.items() if 'this step' in label)
    text = (f'# Host share of one training step (CPU proxy), batch {batch}, {size[0]}x'
            f'{size[1]}, {", ".join(map(str, num_gt))} boxes\n\n{hp.table(rows)}\n\n'
            f'Where this step synchronises (phase, kind, code):\n\n{sites}\n')
    os.makedirs(args.out_dir, exist_ok=True)
    path = os.path.join(args.out_dir, 'host_profile.md')
    with open(path, 'w') as f:
        f.write(text)
    with open(os.path.join(args.out_dir, 'host_profile.json'), 'w') as f:
        json.dump(rows, f, indent=1, default=str)
    print(text)
    print(f'wrote {path}')
    return 0


def inference_main(args) -> int:
    import os

    from analysis_tools import inference_benchmark as ib
    from projects.dino_dinov2.deploy import parse_shape
    shape = parse_shape(args.shape)
    config, checkpoint = args.configs
    results = ib.run(config, checkpoint, shape, iters=args.iters, warmup=args.warmup,
                     out_dir=args.out_dir, device=args.device, cfg_options=args.cfg_options,
                     rows=tuple(args.rows or ib.ROWS), calib=args.calib,
                     calib_images=args.calib_images, image=args.check,
                     interleave=args.interleave)
    title = (f'Inference, {osp.basename(config)}, batch 1, {shape[0]}x{shape[1]}, median of '
             f'{args.iters} after {args.warmup} warm-up')
    if args.interleave:
        title += (f'; in turn: the rows run one after another in one process, median of '
                  f'{args.interleave} rounds (the ratios are theirs)')
    text = ib.table(results, title)
    path = os.path.join(args.out_dir, 'inference.md')
    with open(path, 'w') as f:
        f.write(text + '\n')
    print(text)
    print(f'wrote {path}')
    return 0


def main(argv=None):
    args = parse_args(argv)
    from projects.dino_dinov2.cli import check_device
    check_device(args.device)
    if args.deform_attn:
        return deform_attn_main(args)
    if args.inference:
        return inference_main(args)
    if args.host_profile:
        return host_profile_main(args)
    import torch

    from analysis_tools import benchmark as bm
    if args.threads:
        torch.set_num_threads(args.threads)
    variants = [bm.Variant(c, dict(args.cfg_options or {}),
                           args.labels[i] if args.labels else None)
                for i, c in enumerate(args.configs)]
    baseline = None
    if args.baseline is not None:
        options = dict(args.cfg_options or {})
        options.update(args.baseline_cfg_options or {})
        baseline = [[bm.Variant(args.baseline or v.config, options, args.baseline_label,
                                role='baseline')] for v in variants]
        if args.extra_baseline_cfg_options:
            extra = dict(options, **args.extra_baseline_cfg_options)
            for v, group in zip(variants, baseline):
                group.append(bm.Variant(args.baseline or v.config, extra,
                                        args.extra_baseline_label, role='baseline'))
    size = None
    if args.img_size:
        size = (args.img_size[0], args.img_size[-1])
    results = bm.run_grid(
        variants, args.precision, args.batch_sizes, baseline=baseline,
        device=args.device, iters=args.iters, warmup=args.warmup,
        infer_iters=args.infer_iters, image_size=size, real_data=args.real_data,
        num_gt=(args.num_gt or [5])[0], pretrained=args.pretrained)
    paths = bm.write_report(results, args.out_dir)
    print()
    print(bm.report_markdown(results))
    print(f'wrote {paths["md"]}')
    print(f'wrote {paths["json"]}')
    return 0


if __name__ == '__main__':
    from projects.dino_dinov2.cli.error_exit import exit_on_user_error
    with exit_on_user_error():  # bad input: 'error: ...', exit 2; a bug: exit 1
        sys.exit(main())
