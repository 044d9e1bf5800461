# The 12-epoch optimiser over "50 epochs": 375,000 iterations at total batch 16, lr x0.1 at
# 300,000 (after epoch 40); validation every 2,500 iterations, as the original.
_base_ = './schedule_12e.py'
max_iters = 375000
max_epochs = 50
train_cfg = dict(max_iters=max_iters, val_interval=2500)
param_scheduler = [
    dict(type='MultiStepLR', begin=0, end=max_iters, by_epoch=False, milestones=[300000],
         gamma=0.1)
]
