"""What one EMA update costs: mmdet's ``ExpMomentumEMA`` against :class:`LeanExpMomentumEMA`.

``python tools/analysis_tools/ema_cost.py [CONFIG] [--cfg-options k=v ...]``
builds the config's detector (backbone weights not downloaded) and prints, for each EMA
class: the values its copy holds, the ATen ops and host synchronisations of one update
(counted by :class:`host_profile.StepCounter`; on a GPU each sync stalls the launch queue),
and the time of one update on this machine's CPU.
"""
from __future__ import annotations

import argparse
import gc
import time
from typing import List

DEFAULT_CONFIG = 'configs/dino_dinov2_s_12ep.py'


def ema_cost_rows(model, momentum: float = 0.007, gamma: float = 100,
                  repeats: int = 3) -> List[dict]:
    from mmdet.models.layers import ExpMomentumEMA

    from projects.dino_dinov2.models.ema import LeanExpMomentumEMA
    from .host_profile import StepCounter
    own = {id(p) for p in model.parameters()}
    rows = []
    for name, cls in (('mmdet ExpMomentumEMA', ExpMomentumEMA),
                      ('LeanExpMomentumEMA', LeanExpMomentumEMA)):
        gc.collect()
        ema = cls(model, momentum=momentum, gamma=gamma)
        copied = sum(p.numel() for p in ema.module.parameters() if id(p) not in own)
        ema.update_parameters(model)  # the first update copies
        counter = StepCounter()
        counter.phase = 'ema'
        with counter:
            ema.update_parameters(model)
        start = time.perf_counter()
        for _ in range(repeats):
            ema.update_parameters(model)
        rows.append(dict(name=name, copied=copied, ops=counter.ops['ema'],
                         syncs=sum(counter.syncs.values()),
                         ms=(time.perf_counter() - start) / repeats * 1e3))
        del ema
    return rows


def format_rows(rows: List[dict]) -> str:
    lines = ['| EMA | values copied | ATen ops per update | host syncs per update | ms per '
             'update (CPU) |', '| --- | ---: | ---: | ---: | ---: |']
    lines += [f'| {r["name"]} | {r["copied"] / 1e6:.1f} M | {r["ops"]} | {r["syncs"]} | '
              f'{r["ms"]:.0f} |' for r in rows]
    return '\n'.join(lines)


def main(argv=None) -> List[dict]:
    from mmengine.config import DictAction
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('config', nargs='?', default=DEFAULT_CONFIG)
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, default={})
    args = parser.parse_args(argv)
    from mmengine.registry import init_default_scope

    from mmdet.registry import MODELS

    from projects.dino_dinov2.cli.config_setup import load_config, skip_backbone_download
    cfg = load_config(args.config, dict(args.cfg_options))
    skip_backbone_download(cfg)
    init_default_scope('mmdet')
    model = MODELS.build(cfg.model)
    params = list(model.parameters())
    trained = [p for p in params if p.requires_grad]
    print(f'{args.config}: {len(params)} tensors ({sum(p.numel() for p in params) / 1e6:.1f} '
          f'M values), {len(trained)} trained ({sum(p.numel() for p in trained) / 1e6:.1f} M)')
    rows = ema_cost_rows(model)
    print(format_rows(rows))
    return rows


if __name__ == '__main__':  # run as a script: the package and analysis_tools importable
    import os.path as _osp
    import sys as _sys
    _tools = _osp.dirname(_osp.dirname(_osp.abspath(__file__)))
    _sys.path[:0] = [_osp.dirname(_tools), _tools]
    from analysis_tools.ema_cost import main as _ema_cost_main
    _ema_cost_main()
