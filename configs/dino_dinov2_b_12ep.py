# DINO-4scale, frozen DINOv2 ViT-B/16, COCO 2017, 12 epochs, total batch 16 (8 GPUs x 2).
_base_ = [
    './_base_/models/dino_dinov2_b.py', './_base_/datasets/coco_detection.py',
    './_base_/schedules/schedule_12e.py', './_base_/default_runtime.py'
]
