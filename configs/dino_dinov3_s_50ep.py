# DINO-4scale, frozen DINOv3 ViT-S/16, COCO 2017, 50 epochs (lr drop after
# 40): the DINOv2 recipe with the backbone swapped (configs/_base_/models/dino_dinov3_s.py).
_base_ = [
    './_base_/models/dino_dinov3_s.py', './_base_/datasets/coco_detection.py',
    './_base_/schedules/schedule_50e.py', './_base_/default_runtime.py'
]
