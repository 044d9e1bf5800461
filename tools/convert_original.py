#!/usr/bin/env python
"""Convert a checkpoint of the original (detectron2/detrex DINO on DINOv2) to this project.

    python tools/convert_original.py ORIGINAL.pth OUT.pth [--config CONFIG]

ORIGINAL.pth: the original's checkpoint (``{'model': state_dict, ...}`` as detectron2 saves
it, e.g. ``model_final.pth`` of the Hugging Face repository dgcnz/dinov2_vitdet_DINO_12ep).
Every tensor is mapped to the config's model (default ``configs/dino_dinov2_b_12ep.py``; a
checkpoint whose ViT is 384 wide picks ``configs/dino_dinov2_s_12ep.py``), the class rows
reordered to the config's COCO class order; a tensor left over on either side is an error
that lists them. OUT.pth holds ``state_dict`` and ``meta.dataset_meta`` (the class names)
and loads in ``tools/test.py``, ``tools/infer.py`` and ``tools/train.py --load-from``.
"""
import argparse
import io
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIGS = {384: 'configs/dino_dinov2_s_12ep.py', 768: 'configs/dino_dinov2_b_12ep.py'}


def parse_args(argv=None):
    from mmengine.config import DictAction
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n\n', 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('original', help="the original's checkpoint (.pth)")
    parser.add_argument('out', help='converted checkpoint to write (.pth)')
    parser.add_argument('--config', help='config of the detector to convert to (default: '
                        'the ViT-B or ViT-S 12-epoch recipe, by the checkpoint\'s ViT width)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config settings, key=value')
    parser.add_argument('--trust-pickle', action='store_true',
                        help='read ORIGINAL.pth with torch.load(weights_only=False): only for a '
                        'file you trust whose training state holds objects the safe loader '
                        'refuses (the model\'s tensors are all that is kept)')
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    import torch

    from projects.dino_dinov2 import cli
    from projects.dino_dinov2 import original_checkpoint as oc

    cli.check_checkpoint_file(args.original)
    if args.trust_pickle:
        obj = torch.load(args.original, map_location='cpu', weights_only=False)
    else:
        try:
            obj = cli.load_local_checkpoint(args.original, map_location='cpu')
        except cli.CheckpointError as e:
            if 'allow-list' not in str(e):
                raise
            raise cli.CheckpointError(f'{e}; if you trust the file, convert it with '
                                      '--trust-pickle') from None
    state = cli.original_state_of(obj)
    if state is None:
        kind = cli.checkpoint_kind(obj)
        raise oc.ConversionError(f'{args.original} is not a checkpoint of the original '
                                 f'(detrex DINO keys such as transformer.level_embeds are '
                                 f'missing); it is {cli.describe_kind(kind)}')
    config = args.config
    if config is None:
        width = state.get('backbone.net.timm_model.model.cls_token', torch.empty(0)).shape[-1]
        config = osp.join(ROOT, CONFIGS.get(width, CONFIGS[768]))
        print(f'config: {osp.relpath(config, ROOT)} (the checkpoint\'s ViT is {width} wide)')
    cfg = cli.load_config(config, args.cfg_options)
    model = cli.build_target_model(cfg)
    converted, info = oc.convert_for_model(state, model, cfg)
    checkpoint = oc.converted_checkpoint(converted, info, args.original)
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    cli.atomic_write(buffer.getvalue(), args.out)  # never a half-written OUT
    order = ('the config\'s class order' if info['classes'] else 'COCO\'s class order')
    print(f'converted {info["converted"]} tensors of {args.original} ({info["num_tensors"]} '
          f'in the file: {info["aliases_and_stats"]} shared head aliases and pixel '
          f'statistics checked and dropped); {info["num_classes"]} classes in {order} '
          f'-> {args.out}')
    return 0


if __name__ == '__main__':
    from projects.dino_dinov2.cli.error_exit import exit_on_user_error
    with exit_on_user_error():  # bad input: 'error: ...', exit 2; a bug: exit 1
        sys.exit(main())
