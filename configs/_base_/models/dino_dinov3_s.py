# The ViT-S model with a DINOv3 ViT-S/16 backbone (embed dim 384).
_base_ = './dino_dinov2_s.py'
model = dict(backbone=dict(type='TimmDinov3', model_name='vit_small_patch16_dinov3.lvd1689m'))
