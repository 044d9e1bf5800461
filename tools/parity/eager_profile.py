#!/usr/bin/env python
"""Where eager inference spends its time, operator by operator: this project's model or
the original's, so that the two can be set side by side.

    python tools/parity/eager_profile.py CONFIG CKPT --shape 512x512 --json ours.json
    VENV/bin/python tools/parity/eager_profile.py --original SRC --preset s \
        --shape 512x512 --json original.json --against ours.json

Ours runs as the latency table's PyTorch row does (``tools/benchmark.py --inference``'s
``pytorch-fp32``: the export wrapper, eager float32, one seeded image); the original as
``original_outputs.py --time`` does (its ``model([{'image': ...}])``, in its own venv,
tools/parity/install_original.sh). After one warm-up, ``--runs`` images are profiled with
``torch.profiler``; the table gives, per operator and input shapes, the calls and the
milliseconds per image (self CPU time), largest first, and the total. ``--against`` adds
the columns of another run's ``--json`` (the same operator with the same shapes).
"""
import argparse
import json
import os
import os.path as osp
import sys

HERE = osp.dirname(osp.abspath(__file__))


def op_table(call, runs: int) -> dict:
    """{'operator shapes': [calls per image, ms per image]} of ``runs`` profiled calls
    (self CPU time), after one unprofiled warm-up."""
    from torch.profiler import ProfilerActivity, profile
    call()
    table = {}
    for _ in range(runs):
        with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
            call()
        for event in prof.events():  # self times: each millisecond counted once
            row = table.setdefault(f'{event.name} {event.input_shapes}', [0, 0.0])
            row[0] += 1 / runs
            row[1] += event.self_cpu_time_total / 1e3 / runs
    return table


def format_table(table: dict, against: dict = None, top: int = 25) -> str:
    lines = ['| ms / image | calls | operator and input shapes |' if against is None else
             '| ms / image | calls | against: ms | calls | operator and input shapes |']
    lines.append('| ---: | ---: | --- |' if against is None else '| ---: | ---: | ---: | ---: | --- |')
    for key, (calls, ms) in sorted(table.items(), key=lambda kv: -kv[1][1])[:top]:
        other = '' if against is None else (
            '| {:.1f} | {:.0f} '.format(against[key][1], against[key][0]) if key in against
            else '| - | - ')
        lines.append(f'| {ms:.1f} | {calls:.0f} {other}| `{key[:110]}` |')
    total = sum(ms for _, ms in table.values())
    lines.append(f'total {total:.0f} ms / image' + (
        '' if against is None else
        f'; against {sum(ms for _, ms in against.values()):.0f} ms'))
    return '\n'.join(lines)


def ours_call(config: str, checkpoint: str, shape, cfg_options):
    """The latency table's ``pytorch-fp32`` row as a function."""
    sys.path.insert(0, osp.dirname(osp.dirname(HERE)))
    sys.path.insert(0, osp.dirname(HERE))
    from analysis_tools import inference_benchmark as ib
    run, _ = ib._runner('pytorch-fp32', config, checkpoint, None, shape, 'cpu', cfg_options)
    return run


def original_call(src: str, preset: str, size: str):
    sys.path.insert(0, HERE)
    import original_outputs as oo
    oo.bind_original(src)
    edge = osp.join(src, 'edge') if osp.isdir(osp.join(src, 'edge')) else src
    model, _ = oo.build_model(edge, preset, 0)
    return oo.eager_call(model, size)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('config', nargs='?', help="this project's config")
    parser.add_argument('checkpoint', nargs='?', help="this project's checkpoint")
    parser.add_argument('--original', metavar='SRC',
                        help="profile the original's model instead (the folder "
                        'install_original.sh was given; run with its venv)')
    parser.add_argument('--preset', choices=('s', 'b', 'tiny'), default='s',
                        help='with --original: the architecture')
    parser.add_argument('--shape', default='512x512', help='HEIGHTxWIDTH of the image')
    parser.add_argument('--runs', type=int, default=3, help='profiled images')
    parser.add_argument('--threads', type=int, help='torch threads (default: every core)')
    parser.add_argument('--top', type=int, default=25, help='rows printed')
    parser.add_argument('--json', help='also write the table here')
    parser.add_argument('--against', help="another run's --json, side by side")
    parser.add_argument('--cfg-options', nargs='+', default=[], metavar='KEY=VALUE',
                        help="overrides of this project's config (mmengine's syntax)")
    args = parser.parse_args(argv)
    if (args.original is None) == (args.config is None or args.checkpoint is None):
        parser.error('give CONFIG CHECKPOINT, or --original SRC')
    try:
        shape = tuple(int(v) for v in args.shape.lower().split('x'))
        assert len(shape) == 2 and min(shape) > 0
    except (ValueError, AssertionError):
        parser.error(f'--shape {args.shape!r}: give HxW, e.g. 512x512')
    against = None
    if args.against:
        try:
            with open(args.against) as f:
                against = json.load(f)
        except (OSError, ValueError) as exc:
            parser.error(f'--against {args.against}: {exc}')
    import torch
    torch.set_num_threads(args.threads or max(1, os.cpu_count() or 1))
    if args.original:
        call = original_call(args.original, args.preset, args.shape)
    else:
        from mmengine.config import DictAction  # not in the original's venv
        options = argparse.Namespace(cfg_options=None)
        if args.cfg_options:
            DictAction(option_strings=[], dest='cfg_options')(
                parser, options, args.cfg_options)
        call = ours_call(args.config, args.checkpoint, shape, options.cfg_options)
    table = op_table(call, args.runs)
    print(f"{'original ' + args.preset if args.original else args.config}, eager float32 "
          f'{args.shape}, batch 1, {torch.get_num_threads()} threads, mean of {args.runs}:')
    print(format_table(table, against, args.top))
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(table, f)
    return 0


if __name__ == '__main__':
    sys.exit(main())
