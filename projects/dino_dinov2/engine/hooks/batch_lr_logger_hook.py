"""``BatchLrLoggerHook``: the effective total batch and every param group's lr, logged when
training starts."""
from __future__ import annotations

from collections import OrderedDict
from typing import Optional

from mmengine.hooks import Hook
from mmengine.registry import HOOKS

from ..batch_lr import DEFAULT_BASE_BATCH, BatchLr, loader_batch_size


def param_group_lrs(optimizer, named_parameters) -> "OrderedDict[float, list]":
    """``{lr: [top-level module names]}`` over the optimizer's param groups (items of a
    top-level list of modules by index, e.g. ``neck.0``).

    mmengine's optimizer constructor makes one group per parameter when ``paramwise_cfg``
    is set, so groups are summarised by lr with the modules their parameters belong to.
    """
    owner = {p: name for name, p in named_parameters}  # tensors hash by identity
    groups: "OrderedDict[float, dict]" = OrderedDict()
    for group in optimizer.param_groups:
        entry = groups.setdefault(group['lr'], {'params': 0, 'modules': OrderedDict()})
        for p in group['params']:
            entry['params'] += 1
            parts = owner.get(p, '?').split('.')
            parts = parts[1:] if parts[0] == 'module' else parts  # DDP's wrapper
            # a list of modules (the neck: pyramid, channel mapper) by item: neck.0
            top = '.'.join(parts[:2]) if len(parts) > 2 and parts[1].isdigit() else parts[0]
            entry['modules'][top] = True
    return OrderedDict((lr, [e['params'], list(e['modules'])]) for lr, e in
                       sorted(groups.items(), key=lambda kv: kv[0]))


@HOOKS.register_module()
class BatchLrLoggerHook(Hook):
    """Logs the effective total batch and every param group's lr when training starts.

    Runs at ``before_train``, after a resume has restored the optimizer and schedulers, so
    the lrs logged are the ones the first iteration will use.

    Args:
        rule: the ``--auto-scale-lr`` rule applied to the config, for the log line.
        base_batch: the total batch the config's lr was set for.
        base_lr: the lr before scaling.
    """
    priority = 'LOWEST'

    def __init__(self, rule: Optional[str] = None, base_batch: int = DEFAULT_BASE_BATCH,
                 base_lr: Optional[float] = None):
        self.rule = rule
        self.base_batch = base_batch
        self.base_lr = base_lr

    def before_train(self, runner) -> None:
        batch = loader_batch_size(runner.train_dataloader)
        summary = BatchLr(batch_per_process=batch, world_size=runner.world_size,
                          base_batch=self.base_batch,
                          base_lr=float('nan') if self.base_lr is None else self.base_lr,
                          rule=self.rule)
        runner.logger.info(summary.describe())
        optim_wrapper = runner.optim_wrapper
        wrappers = (optim_wrapper.values() if hasattr(optim_wrapper, 'values')
                    else [optim_wrapper])
        params = list(runner.model.named_parameters())
        for wrapper in wrappers:
            lrs = param_group_lrs(wrapper.optimizer, params)
            for lr, (count, modules) in lrs.items():
                runner.logger.info(f'param group lr {lr:.3e}: {count} tensors '
                                   f'({", ".join(modules)})')
