"""``python -m projects.dino_dinov2.datasets [--out data/synthetic] [--num-train 256]
[--layout coco|folders|yolo] ...``"""
import argparse
import os.path as osp
import tempfile

from .layouts_out import LAYOUTS, write_layout
from .synthetic import DEFAULT_NUM_CLASSES, generate_synthetic_coco


def main(argv=None):
    parser = argparse.ArgumentParser(
        description='Write the synthetic COCO-format shapes dataset (train and val splits)')
    parser.add_argument('--out', default='data/synthetic', help='output folder')
    parser.add_argument('--num-train', type=int, default=256)
    parser.add_argument('--num-val', type=int, default=64)
    parser.add_argument('--image-size', type=int, default=128)
    parser.add_argument('--num-classes', type=int, default=DEFAULT_NUM_CLASSES)
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--force', action='store_true',
                        help='regenerate even if the annotation files exist')
    parser.add_argument('--layout', choices=LAYOUTS, default='coco',
                        help='coco: annotations/instances_{train,val}.json + train/, val/; '
                             'folders: train/, valid/ each with _annotations.coco.json; '
                             'yolo: data.yaml + {train,valid}/{images,labels} (the layouts '
                             'tools/train.py --data-root reads)')
    args = parser.parse_args(argv)
    if args.layout != 'coco':
        with tempfile.TemporaryDirectory() as tmp:
            generate_synthetic_coco(tmp, args.num_train, args.num_val, seed=args.seed,
                                    image_size=args.image_size, num_classes=args.num_classes)
            print(f'{args.layout}: {write_layout(tmp, args.out, args.layout)}')
        return
    anns = [osp.join(args.out, 'annotations', f'instances_{s}.json') for s in ('train', 'val')]
    if not args.force and all(osp.isfile(a) for a in anns):
        print(f'synthetic dataset already in {args.out} (use --force to regenerate)')
        return
    files = generate_synthetic_coco(args.out, args.num_train, args.num_val, seed=args.seed,
                                    image_size=args.image_size, num_classes=args.num_classes)
    for split, path in files.items():
        print(f'{split}: {path}')


if __name__ == '__main__':
    main()
