"""A real one-node SLURM cluster for the tests: Debian's slurm-wlm and munge, daemons started
by the test and stopped by PID.

Two partitions share the node: ``cpu`` (the default, preemptible: ``PreemptMode=CANCEL`` with
a grace time) and ``urgent`` (a higher ``PriorityTier``), so a job submitted to ``urgent``
really preempts a running ``cpu`` job, as on a cluster. Clients (srun, sbatch, scancel,
scontrol) find it through ``SLURM_CONF`` in :attr:`SlurmCluster.env`.

Run by hand::

    python tests/slurm_cluster.py /tmp/cluster     # starts it, prints SLURM_CONF, waits
"""
from __future__ import annotations

import os
import os.path as osp
import shutil
import signal
import socket
import subprocess
import sys
import time
from typing import Dict, List, Optional

DAEMONS = ('munged', 'slurmctld', 'slurmd', 'srun', 'sbatch', 'scontrol', 'scancel', 'sinfo')
PACKAGES = ('slurm-wlm', 'munge')


def missing_programs() -> List[str]:
    return [p for p in DAEMONS if shutil.which(p) is None
            and not osp.exists(osp.join('/usr/sbin', p))]


def install_packages(timeout: float = 600) -> Optional[str]:
    """apt-get install slurm-wlm munge where they are missing (as root); returns why not."""
    if not missing_programs():
        return None
    if os.geteuid() != 0 or shutil.which('apt-get') is None:
        return f'{", ".join(PACKAGES)} are not installed and this is not root with apt-get'
    env = dict(os.environ, DEBIAN_FRONTEND='noninteractive')
    for cmd in (['apt-get', 'update'], ['apt-get', 'install', '-y', *PACKAGES]):
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            return f'{" ".join(cmd)} failed: {proc.stderr.strip().splitlines()[-1:]}'
    missing = missing_programs()
    return f'still missing after the install: {missing}' if missing else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def _program(name: str) -> str:
    return shutil.which(name) or osp.join('/usr/sbin', name)


class SlurmCluster:
    """munged + slurmctld + slurmd on this machine, in ``root`` (a fresh folder)."""

    def __init__(self, root: str, cpus: Optional[int] = None, grace_s: int = 60,
                 kill_wait_s: int = 30):
        self.root = osp.abspath(root)
        self.cpus = cpus or os.cpu_count() or 1
        self.grace_s = grace_s
        self.kill_wait_s = kill_wait_s
        self.node = socket.gethostname().split('.')[0]
        self.conf = osp.join(self.root, 'slurm.conf')
        self.munge_socket = osp.join(self.root, 'munge', 'munge.socket')
        self.pids: Dict[str, int] = {}

    @property
    def env(self) -> Dict[str, str]:
        return dict(SLURM_CONF=self.conf)

    def _write_conf(self) -> None:
        r = self.root
        for d in ('munge', 'state', 'spool', 'log'):
            os.makedirs(osp.join(r, d), exist_ok=True)
        os.chmod(osp.join(r, 'munge'), 0o700)
        mem_mb = os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') // 2**20 // 2
        text = f"""\
ClusterName=dinotest
SlurmctldHost={self.node}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
AuthType=auth/munge
AuthInfo=socket={self.munge_socket}
CredType=cred/munge
StateSaveLocation={r}/state
SlurmdSpoolDir={r}/spool
SlurmctldPidFile={r}/slurmctld.pid
SlurmdPidFile={r}/slurmd.pid
SlurmctldLogFile={r}/log/slurmctld.log
SlurmdLogFile={r}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/backfill
PreemptType=preempt/partition_prio
PreemptMode=CANCEL
KillWait={self.kill_wait_s}
MpiDefault=none
ReturnToService=2
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/none
InactiveLimit=0
MinJobAge=600
NodeName={self.node} NodeAddr=127.0.0.1 CPUs={self.cpus} RealMemory={mem_mb} State=UNKNOWN
PartitionName=cpu Nodes={self.node} Default=YES MaxTime=INFINITE State=UP PriorityTier=1 PreemptMode=CANCEL GraceTime={self.grace_s}
PartitionName=urgent Nodes={self.node} MaxTime=INFINITE State=UP PriorityTier=10 PreemptMode=OFF
"""
        with open(self.conf, 'w') as f:
            f.write(text)

    def start(self, timeout: float = 60) -> 'SlurmCluster':
        self._write_conf()
        r = self.root
        subprocess.run([_program('munged'), '--force', f'--socket={self.munge_socket}',
                        f'--pid-file={r}/munge/munged.pid', f'--log-file={r}/log/munged.log',
                        f'--seed-file={r}/munge/munged.seed'], check=True,
                       capture_output=True, timeout=30)
        self.pids['munged'] = self._read_pid(f'{r}/munge/munged.pid', timeout)
        env = dict(os.environ, **self.env)
        subprocess.run([_program('slurmctld'), '-c', '-f', self.conf], env=env, check=True,
                       capture_output=True, timeout=30)
        self.pids['slurmctld'] = self._read_pid(f'{r}/slurmctld.pid', timeout)
        subprocess.run([_program('slurmd'), '-f', self.conf, '-N', self.node], env=env,
                       check=True, capture_output=True, timeout=30)
        self.pids['slurmd'] = self._read_pid(f'{r}/slurmd.pid', timeout)
        deadline = time.time() + timeout
        while time.time() < deadline:
            out = self.run(['sinfo', '-h', '-N', '-o', '%T']).stdout.split()
            if out and all(s in ('idle', 'mixed', 'allocated') for s in out):
                return self
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f'the SLURM node did not come up in {timeout} s: '
                           f'{self.run(["sinfo", "-N"]).stdout} {self.logs()}')

    @staticmethod
    def _read_pid(path: str, timeout: float) -> int:
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                with open(path) as f:
                    return int(f.read().strip())
            except (OSError, ValueError):
                time.sleep(0.1)
        raise RuntimeError(f'no PID file {path} after {timeout} s')

    def run(self, cmd: List[str], **kwargs) -> subprocess.CompletedProcess:
        env = dict(kwargs.pop('env', None) or os.environ, **self.env)
        kwargs.setdefault('timeout', 60)
        return subprocess.run(cmd, env=env, capture_output=True, text=True, **kwargs)

    def job_state(self, job_id: str) -> Dict[str, str]:
        out = self.run(['scontrol', 'show', 'job', '-o', str(job_id)]).stdout
        return dict(kv.split('=', 1) for kv in out.split() if '=' in kv)

    def wait_job(self, job_id: str, timeout: float = 900) -> Dict[str, str]:
        """Wait until the job has ended; returns its ``scontrol show job`` fields."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            state = self.job_state(job_id)
            if state.get('JobState') not in (None, 'PENDING', 'RUNNING', 'CONFIGURING',
                                             'COMPLETING', 'SUSPENDED'):
                return state
            time.sleep(1)
        raise TimeoutError(f'job {job_id} still {self.job_state(job_id).get("JobState")} '
                           f'after {timeout} s')

    def jobs(self) -> List[Dict[str, str]]:
        out = self.run(['scontrol', 'show', 'job', '-o']).stdout
        return [dict(kv.split('=', 1) for kv in line.split() if '=' in kv)
                for line in out.splitlines() if line.startswith('JobId=')]

    def logs(self) -> str:
        text = []
        for name in ('slurmctld', 'slurmd'):
            path = osp.join(self.root, 'log', f'{name}.log')
            if osp.exists(path):
                text.append(f'--- {name}.log ---\n' + open(path).read()[-3000:])
        return '\n'.join(text)

    def stop(self) -> None:
        if self.pids.get('slurmctld'):
            # no job outlives the cluster: cancel them all and wait (SIGKILL after KillWait)
            self.run(['scancel', '--user', 'root', '--signal=KILL'], timeout=30)
            deadline = time.time() + self.kill_wait_s + 30
            while time.time() < deadline and any(
                    j.get('JobState') in ('RUNNING', 'COMPLETING', 'CONFIGURING')
                    for j in self.jobs()):
                time.sleep(0.5)
        for name in ('slurmd', 'slurmctld', 'munged'):
            pid = self.pids.pop(name, None)
            if pid is None:
                continue
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            for _ in range(100):
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.1)
            else:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


if __name__ == '__main__':
    why = install_packages()
    if why:
        sys.exit(why)
    cluster = SlurmCluster(sys.argv[1]).start()
    print(f'export SLURM_CONF={cluster.conf}', flush=True)
    try:
        signal.pause()
    finally:
        cluster.stop()
