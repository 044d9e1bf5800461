"""Which launcher started this process, and the process group it needs.

``--launcher auto`` (the tools' default) picks:

* ``pytorch`` when ``torchrun`` (or ``torch.distributed.launch``) set ``RANK`` and
  ``WORLD_SIZE`` for more than one process;
* ``slurm`` inside a SLURM job step (``srun``: ``SLURM_PROCID``, ``SLURM_NTASKS``,
  ``SLURM_STEP_ID`` and a node list) with more than one task; ``RANK``, ``WORLD_SIZE``,
  ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` are then derived from SLURM's
  variables (no ``scontrol`` needed: compressed node lists are expanded here);
* ``none`` (one process) otherwise.

Why not mmengine's ``init_dist``: it calls ``torch.cuda.set_device`` unconditionally,
needs ``scontrol`` for SLURM, and the Runner then hands ``device_ids=[LOCAL_RANK]`` to
DistributedDataParallel, so a CPU-only run fails. Here the process group is initialised
before the Runner is built (the Runner then skips its own initialisation), with gloo when
there is no CUDA, and ``model_wrapper_cfg`` gets the right ``device_ids``.

Upstream: mmengine 0.10.7 ``mmengine/dist/utils.py`` (``_init_dist_pytorch``,
``_init_dist_slurm``) and ``Runner.wrap_model``. Delete the process-group part when
mmengine's ``init_dist`` initialises gloo without CUDA and the Runner passes no
``device_ids`` on the CPU; the SLURM node-list expansion when it needs no ``scontrol``.
"""
from __future__ import annotations

import datetime
import os
import re
from dataclasses import dataclass
from typing import List, Mapping, MutableMapping, Optional

import torch
import torch.distributed as torch_dist

from ..errors import ConfigError

LAUNCHERS = ('none', 'pytorch', 'slurm', 'mpi', 'auto')
DEFAULT_PORT = 29500
# SLURM jobs sharing a node must not share a rendezvous port: the port is derived from the
# job id unless MASTER_PORT is set (SLURM_JOB_ID % SLURM_PORT_SPAN + SLURM_PORT_BASE).
SLURM_PORT_BASE = 20000
SLURM_PORT_SPAN = 20000


@dataclass
class LaunchInfo:
    """Where this process sits in the job."""
    launcher: str
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    master_addr: Optional[str] = None
    master_port: Optional[int] = None
    backend: Optional[str] = None

    @property
    def distributed(self) -> bool:
        return self.launcher != 'none'

    def describe(self) -> str:
        """The run's line (the same on every rank): launcher, processes, backend, master."""
        if not self.distributed:
            return 'launcher: none (one process)'
        return (f'launcher: {self.launcher}, {self.world_size} processes, backend '
                f'{self.backend}, master {self.master_addr}:{self.master_port}')


# --- SLURM node lists --------------------------------------------------------------------

def _split_top_level(text: str, nodelist: str) -> List[str]:
    """Split at commas outside brackets: 'a[1-2],b' -> ['a[1-2]', 'b']."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == '[':
            depth += 1
            if depth > 1:
                raise LaunchError(f'bad SLURM node list {nodelist!r}: nested "["')
        elif ch == ']':
            depth -= 1
            if depth < 0:
                raise LaunchError(f'bad SLURM node list {nodelist!r}: "]" without "["')
        elif ch == ',' and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    if depth != 0:
        raise LaunchError(f'bad SLURM node list {nodelist!r}: "[" without "]"')
    parts.append(text[start:])
    return parts


def _expand_range(item: str, nodelist: str) -> List[str]:
    """'01-03' -> ['01', '02', '03'] (zero padding kept); '7' -> ['7']."""
    m = re.fullmatch(r'(\d+)(?:-(\d+))?', item.strip())
    if not m:
        raise LaunchError(f'bad SLURM node list {nodelist!r}: range {item!r} is not N or N-M')
    lo, hi = m.group(1), m.group(2)
    if hi is None:
        return [lo]
    if int(hi) < int(lo):
        raise LaunchError(f'bad SLURM node list {nodelist!r}: range {item!r} runs backwards')
    width = len(lo) if lo.startswith('0') else 0
    return [str(i).zfill(width) for i in range(int(lo), int(hi) + 1)]


def _expand_host(expr: str, nodelist: str) -> List[str]:
    """One host expression, possibly with several bracket groups: 'n[1-2]-ib[3,5]'."""
    m = re.search(r'\[([^\]]*)\]', expr)
    if m is None:
        return [expr]
    prefix, suffix = expr[:m.start()], expr[m.end():]
    heads = []
    for item in m.group(1).split(','):
        heads += _expand_range(item, nodelist)
    tails = _expand_host(suffix, nodelist)
    return [prefix + h + t for h in heads for t in tails]


def expand_nodelist(nodelist: str) -> List[str]:
    """Expand a SLURM node list like ``scontrol show hostnames`` does.

    >>> expand_nodelist('node[01-03,07],gpu5')
    ['node01', 'node02', 'node03', 'node07', 'gpu5']
    """
    text = nodelist.strip()
    if not text:
        raise LaunchError('bad SLURM node list \'\': empty')
    hosts: List[str] = []
    for expr in _split_top_level(text, nodelist):
        if not expr:
            raise LaunchError(f'bad SLURM node list {nodelist!r}: empty host between commas')
        hosts += _expand_host(expr, nodelist)
    return hosts


class LaunchError(ConfigError, RuntimeError):
    """A launcher variable or option that cannot start the job as given."""


# --- detection ---------------------------------------------------------------------------

def _slurm_nodelist(env: Mapping[str, str]) -> Optional[str]:
    for key in ('SLURM_STEP_NODELIST', 'SLURM_JOB_NODELIST', 'SLURM_NODELIST'):
        if env.get(key):
            return env[key]
    return None


def _int_var(env: Mapping[str, str], key: str) -> int:
    try:
        return int(env[key])
    except ValueError:
        raise LaunchError(f'{key}={env[key]!r} is not an integer: the launcher (torchrun, '
                          'srun) sets it; unset it, or start the job with tools/dist_train.sh '
                          'or tools/slurm_train.sh') from None


def in_slurm_step(env: Mapping[str, str] = os.environ) -> bool:
    """True inside ``srun`` (a job step), False in the batch script itself.

    The batch shell of ``sbatch`` also has ``SLURM_PROCID`` and ``SLURM_NTASKS``, but only
    job steps have ``SLURM_STEP_ID``: a ``python tools/train.py`` typed straight into the
    batch script must run as one process, not wait for ``SLURM_NTASKS - 1`` peers.
    """
    return ('SLURM_PROCID' in env and 'SLURM_NTASKS' in env
            and ('SLURM_STEP_ID' in env or 'SLURM_STEPID' in env)
            and _slurm_nodelist(env) is not None)


def detect_launcher(env: Mapping[str, str] = os.environ) -> str:
    """'pytorch', 'slurm' or 'none' from the environment (see the module docstring)."""
    if 'RANK' in env and 'WORLD_SIZE' in env:
        return 'pytorch' if _int_var(env, 'WORLD_SIZE') > 1 else 'none'
    if in_slurm_step(env):
        return 'slurm' if _int_var(env, 'SLURM_NTASKS') > 1 else 'none'
    return 'none'


def slurm_dist_env(env: Mapping[str, str] = os.environ) -> dict:
    """DDP's variables for this SLURM task: RANK, WORLD_SIZE, LOCAL_RANK, MASTER_*.

    RANK/WORLD_SIZE/LOCAL_RANK always come from SLURM; MASTER_ADDR and MASTER_PORT keep
    values already set (e.g. by the user), else the first host of the step's node list and
    a port derived from the job id.
    """
    missing = [k for k in ('SLURM_PROCID', 'SLURM_NTASKS') if k not in env]
    nodelist = _slurm_nodelist(env)
    if missing or nodelist is None:
        missing += [] if nodelist else ['SLURM_STEP_NODELIST/SLURM_JOB_NODELIST']
        raise LaunchError(f'--launcher slurm: not inside a SLURM job step (missing '
                          f'{", ".join(missing)}); start it with srun')
    out = {
        'RANK': str(_int_var(env, 'SLURM_PROCID')),
        'WORLD_SIZE': str(_int_var(env, 'SLURM_NTASKS')),
        'LOCAL_RANK': str(_int_var(env, 'SLURM_LOCALID') if 'SLURM_LOCALID' in env else 0),
    }
    out['MASTER_ADDR'] = env.get('MASTER_ADDR') or expand_nodelist(nodelist)[0]
    if env.get('MASTER_PORT'):
        out['MASTER_PORT'] = str(_int_var(env, 'MASTER_PORT'))
    elif env.get('SLURM_JOB_ID', '').isdigit():
        out['MASTER_PORT'] = str(SLURM_PORT_BASE + int(env['SLURM_JOB_ID']) % SLURM_PORT_SPAN)
    else:
        out['MASTER_PORT'] = str(DEFAULT_PORT)
    return out


def resolve_launcher(launcher: str, env: Mapping[str, str] = os.environ) -> str:
    """``auto`` -> the detected launcher; anything else is checked and returned."""
    if launcher not in LAUNCHERS:
        raise LaunchError(f'--launcher {launcher!r}: choose one of {", ".join(LAUNCHERS)}')
    return detect_launcher(env) if launcher == 'auto' else launcher


# --- process group -----------------------------------------------------------------------

def init_distributed(launcher: str, backend: str = 'nccl', timeout_s: Optional[float] = None,
                     env: MutableMapping[str, str] = os.environ) -> LaunchInfo:
    """Initialise the default process group for ``pytorch``/``slurm`` launchers.

    ``backend`` is used when CUDA is available (then each process takes GPU
    ``LOCAL_RANK % device_count``); without CUDA the backend is gloo. ``mpi`` is left to
    mmengine, ``none`` does nothing.
    """
    if launcher == 'none':
        return LaunchInfo('none')
    if launcher == 'mpi':  # mmengine's Runner initialises it
        return LaunchInfo('mpi', rank=int(env.get('OMPI_COMM_WORLD_RANK', 0)),
                          local_rank=int(env.get('OMPI_COMM_WORLD_LOCAL_RANK', 0)),
                          world_size=int(env.get('OMPI_COMM_WORLD_SIZE', 1)), backend=backend)
    if launcher == 'slurm':
        env.update(slurm_dist_env(env))
    elif launcher == 'pytorch':
        missing = [k for k in ('RANK', 'WORLD_SIZE', 'MASTER_ADDR', 'MASTER_PORT')
                   if k not in env]
        if missing:
            raise LaunchError(f'--launcher pytorch: {", ".join(missing)} not set; start '
                              'it with torchrun (tools/dist_train.sh)')
    else:
        raise LaunchError(f'--launcher {launcher!r}: choose one of {", ".join(LAUNCHERS)}')
    env.setdefault('LOCAL_RANK', '0')
    rank, world_size = _int_var(env, 'RANK'), _int_var(env, 'WORLD_SIZE')
    local_rank = _int_var(env, 'LOCAL_RANK')
    port = _int_var(env, 'MASTER_PORT')
    if world_size < 1 or not 0 <= rank < world_size or local_rank < 0:
        raise LaunchError(f'RANK={rank}, WORLD_SIZE={world_size}, LOCAL_RANK={local_rank}: '
                          'need WORLD_SIZE >= 1 and 0 <= RANK < WORLD_SIZE; the launcher '
                          '(torchrun, srun) sets these, not the user')
    if not 0 < port < 65536:
        raise LaunchError(f'MASTER_PORT={port} is not a TCP port (1-65535)')

    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
    else:
        backend = 'gloo'
    if not torch_dist.is_initialized():
        kwargs = {}
        if timeout_s is not None:
            kwargs['timeout'] = datetime.timedelta(seconds=timeout_s)
        torch_dist.init_process_group(backend=backend, init_method='env://', rank=rank,
                                      world_size=world_size, **kwargs)
    return LaunchInfo(launcher, rank=rank, local_rank=local_rank, world_size=world_size,
                      master_addr=env.get('MASTER_ADDR'),
                      master_port=port, backend=backend)


def setup_launcher(cfg, launcher: str = 'auto') -> LaunchInfo:
    """Resolve ``--launcher``, start the process group and adapt the config to it.

    Sets ``cfg.launcher`` and, for DDP, ``cfg.model_wrapper_cfg``: ``device_ids`` is this
    process's GPU, or ``None`` on the CPU; ``find_unused_parameters`` comes from the
    config's top-level ``find_unused_parameters`` (False by default).
    """
    launcher = resolve_launcher(launcher)
    dist_cfg = dict(cfg.get('env_cfg', {}).get('dist_cfg', {}) or {})
    info = init_distributed(launcher, backend=dist_cfg.get('backend', 'nccl'),
                            timeout_s=dist_cfg.get('timeout'))
    cfg.launcher = info.launcher
    if info.launcher in ('pytorch', 'slurm'):
        wrapper = dict(cfg.get('model_wrapper_cfg') or {})
        wrapper.setdefault('type', 'MMDistributedDataParallel')
        if wrapper['type'] in ('MMDistributedDataParallel', 'DistributedDataParallel'):
            wrapper.setdefault('broadcast_buffers', False)
            wrapper.setdefault('find_unused_parameters',
                               bool(cfg.get('find_unused_parameters', False)))
            if 'device_ids' not in wrapper:
                wrapper['device_ids'] = ([torch.cuda.current_device()]
                                         if torch.cuda.is_available() else None)
        cfg.model_wrapper_cfg = wrapper
    return info
