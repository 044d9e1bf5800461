# The ViT-B model with a DINOv3 ViT-B/16 backbone (timm's Eva: natively patch 16, rotary
# position embedding, 4 register tokens; weights gated behind Meta's license on the hub,
# or a local file in timm's or Meta's layout: model.backbone.pretrained=/path).
_base_ = './dino_dinov2_b.py'
model = dict(backbone=dict(type='TimmDinov3', model_name='vit_base_patch16_dinov3.lvd1689m'))
