# The 12-epoch optimiser over 50 epochs, lr x0.1 after epoch 40.
_base_ = './schedule_12e.py'
max_epochs = 50
train_cfg = dict(max_epochs=max_epochs, val_interval=5)
param_scheduler = [
    dict(type='MultiStepLR', begin=0, end=max_epochs, by_epoch=True, milestones=[40],
         gamma=0.1)
]
