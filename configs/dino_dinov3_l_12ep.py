# DINO-4scale, frozen DINOv3 ViT-L/16, COCO 2017, 12 epochs, total batch 16: the DINOv2 recipe with
# the backbone swapped (configs/_base_/models/dino_dinov3_l.py).
_base_ = [
    './_base_/models/dino_dinov3_l.py', './_base_/datasets/coco_detection.py',
    './_base_/schedules/schedule_12e.py', './_base_/default_runtime.py'
]
