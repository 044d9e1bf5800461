#!/usr/bin/env python
"""Check a COCO-format or YOLO dataset before training on it.

    python tools/check_dataset.py --data-root DIR [--show N] [--out-dir DIR]
    python tools/check_dataset.py ANN_FILE IMG_DIR [--show N]

--data-root takes the layouts tools/train.py --data-root takes (COCO 2017, one folder per
split as Roboflow and CVAT export, or a YOLO data.yaml); ANN_FILE IMG_DIR checks one file.
Per split: images, boxes, boxes per class, image and box sizes, and the problems found:
boxes outside the image or degenerate, missing or unreadable images, duplicate ids, images
without boxes, categories without boxes, crowd boxes, skipped YOLO label lines. --show N
draws N images per split with their boxes and class names into OUT_DIR/<split>_samples.png.
Exit 1 when training would stop on an error found (missing or unreadable images, a file
that is not COCO, classes that differ between splits, nothing to train on), else 0.
"""
import argparse
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n\n', 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('ann_file', nargs='?', help='a COCO annotation file')
    parser.add_argument('img_dir', nargs='?', help='the folder of its images')
    parser.add_argument('--data-root', metavar='DIR', help='a dataset folder (all splits)')
    parser.add_argument('--show', type=int, default=0, metavar='N',
                        help='draw N images per split with their boxes')
    parser.add_argument('--out-dir', default='work_dirs/check_dataset',
                        help='where --show writes its PNGs')
    parser.add_argument('--no-images', action='store_true',
                        help='do not open the image files (faster; missing or unreadable '
                             'images are not found then)')
    args = parser.parse_args(argv)
    if (args.data_root is None) == (args.ann_file is None):
        parser.error('give --data-root DIR, or ANN_FILE IMG_DIR')
    if args.ann_file is not None and args.img_dir is None:
        parser.error('ANN_FILE needs its IMG_DIR')
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    from analysis_tools.dataset_check import check_splits, draw_samples, format_report
    from projects.dino_dinov2.datasets.layout import Split, find_layout
    if args.data_root is not None:
        layout = find_layout(args.data_root)
        print(f'{args.data_root}: {layout.kind}')
        splits = list(layout.splits.values())
    else:
        splits = [Split('train', args.ann_file, args.img_dir)]
    report = check_splits(splits, check_images=not args.no_images)
    print(format_report(report))
    for summary in report.summaries.values() if args.show else []:
        path = draw_samples(summary, args.show, osp.join(args.out_dir,
                                                         f'{summary.name}_samples.png'))
        if path:
            print(f'wrote {path}')
    return 1 if report.errors else 0


if __name__ == '__main__':
    from projects.dino_dinov2.cli.error_exit import exit_on_user_error
    with exit_on_user_error():  # a folder that is no dataset: 'error: ...', exit 2
        sys.exit(main())
