"""Launcher detection (torchrun, SLURM, one process) and the launch scripts."""
import importlib.util
import os
import shlex
import subprocess

import pytest

from helpers import REPO, clean_env
from projects.dino_dinov2.cli import (detect_launcher, expand_nodelist, init_distributed,
                                      slurm_dist_env)
from projects.dino_dinov2.upstream.launcher import in_slurm_step, resolve_launcher

SCRIPTS = ['tools/dist_train.sh', 'tools/dist_test.sh', 'tools/slurm_train.sh',
           'tools/slurm_test.sh', 'tools/sbatch_preemptible.sh']


# --- SLURM node lists ----------------------------------------------------------------------

@pytest.mark.parametrize('nodelist,hosts', [
    ('node01', ['node01']),
    ('node[01-03,07]', ['node01', 'node02', 'node03', 'node07']),
    ('gpu-a[8-10],gpu-b5', ['gpu-a8', 'gpu-a9', 'gpu-a10', 'gpu-b5']),
    ('n[098-101]', ['n098', 'n099', 'n100', 'n101']),
    ('rack[1-2]-node[3,5]', ['rack1-node3', 'rack1-node5', 'rack2-node3', 'rack2-node5']),
    ('a,b[1-2],c', ['a', 'b1', 'b2', 'c']),
])
def test_expand_nodelist(nodelist, hosts):
    assert expand_nodelist(nodelist) == hosts


@pytest.mark.parametrize('nodelist,match', [
    ('node[01-03', r"'node\[01-03'.*without"), ('node[3-1]', 'backwards'),
    ('node[a-b]', r"'a-b' is not N or N-M"), ('a,,b', 'empty host')])
def test_bad_nodelist_names_the_value(nodelist, match):
    with pytest.raises(ValueError, match=match):
        expand_nodelist(nodelist)


# --- detection -----------------------------------------------------------------------------

def slurm_step(procid, localid, ntasks=8, nodelist='gpu-[03-04]', **extra):
    """What srun sets for task ``procid`` of a job step (two nodes x 4 tasks by default)."""
    env = dict(SLURM_JOB_ID='123456', SLURM_STEP_ID='0', SLURM_PROCID=str(procid),
               SLURM_LOCALID=str(localid), SLURM_NTASKS=str(ntasks),
               SLURM_NODEID=str(procid // 4), SLURM_STEP_NODELIST=nodelist,
               SLURM_JOB_NODELIST=nodelist, SLURM_NNODES='2')
    env.update(extra)
    return env


@pytest.mark.parametrize('procid,localid', [(0, 0), (3, 3), (5, 1), (7, 3)])
def test_slurm_step_gives_ddp_variables(procid, localid):
    env = slurm_step(procid, localid)
    assert detect_launcher(env) == 'slurm'
    assert slurm_dist_env(env) == dict(RANK=str(procid), WORLD_SIZE='8',
                                       LOCAL_RANK=str(localid), MASTER_ADDR='gpu-03',
                                       MASTER_PORT=str(20000 + 123456 % 20000))


def test_slurm_keeps_a_given_master_and_uses_the_step_nodes():
    env = slurm_step(2, 0, MASTER_PORT='29999', SLURM_STEP_NODELIST='cn[10-11]',
                     SLURM_JOB_NODELIST='cn[07-11]')
    assert slurm_dist_env(env)['MASTER_ADDR'] == 'cn10'  # the step's first node
    assert slurm_dist_env(env)['MASTER_PORT'] == '29999'
    assert slurm_dist_env(dict(env, MASTER_ADDR='head'))['MASTER_ADDR'] == 'head'


def test_detection_order():
    torchrun = dict(RANK='1', WORLD_SIZE='2', LOCAL_RANK='1', MASTER_ADDR='127.0.0.1',
                    MASTER_PORT='29500', TORCHELASTIC_RUN_ID='x')
    assert detect_launcher(torchrun) == 'pytorch'
    assert detect_launcher(dict(slurm_step(0, 0), **torchrun)) == 'pytorch'  # srun torchrun
    assert detect_launcher({}) == 'none'
    assert detect_launcher(dict(torchrun, WORLD_SIZE='1')) == 'none'
    batch_shell = {k: v for k, v in slurm_step(0, 0).items() if k != 'SLURM_STEP_ID'}
    assert not in_slurm_step(batch_shell) and detect_launcher(batch_shell) == 'none'
    assert detect_launcher(slurm_step(0, 0, ntasks=1)) == 'none'
    assert resolve_launcher('slurm', {}) == 'slurm'
    with pytest.raises(ValueError, match="'ssh'"):
        resolve_launcher('ssh', {})


def test_bad_slurm_variable_names_itself():
    with pytest.raises(ValueError, match="SLURM_NTASKS='eight'"):
        detect_launcher(slurm_step(0, 0, ntasks='eight'))


def test_explicit_launchers_outside_their_environment_say_what_is_missing():
    with pytest.raises(RuntimeError, match=r'^--launcher slurm: not inside a SLURM job step '
                       r'\(missing SLURM_PROCID, SLURM_NTASKS'):
        init_distributed('slurm', env={})
    with pytest.raises(RuntimeError, match='^--launcher pytorch: RANK, WORLD_SIZE, '
                       'MASTER_ADDR, MASTER_PORT not set'):
        init_distributed('pytorch', env={'LOCAL_RANK': '0'})


def _load_tool(name):
    spec = importlib.util.spec_from_file_location(f'tool_{name}',
                                                  os.path.join(REPO, 'tools', f'{name}.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_train_flags_take_both_spellings(monkeypatch):
    monkeypatch.setenv('LOCAL_RANK', '3')
    parse = _load_tool('train').parse_args
    dash = parse(['c.py', '--local-rank', '1', '--batch-size', '4', '--wandb-project', 'p',
                  '--job-type', 'train', '--wandb-entity', 'me', '--wandb-mode', 'offline',
                  '--wandb-resume-id', 'abc', '--lr', '1e-4', '--auto-scale-lr', 'sqrt'])
    underscore = parse(['c.py', '--local_rank', '1', '--batch_size', '4', '--wandb_project',
                        'p', '--job_type', 'train', '--wandb_entity', 'me', '--wandb_mode',
                        'offline', '--wandb_resume_id', 'abc', '--lr', '1e-4',
                        '--auto-scale-lr', 'sqrt'])
    assert vars(dash) == vars(underscore)
    assert (dash.local_rank, dash.batch_size, dash.lr, dash.auto_scale_lr) == (1, 4, 1e-4, 'sqrt')
    assert dash.launcher == 'auto' and parse(['c.py', '--auto-scale-lr']).auto_scale_lr == 'linear'
    assert _load_tool('test').parse_args(['c.py', 'e.pth']).launcher == 'auto'


# --- scripts -------------------------------------------------------------------------------

@pytest.mark.parametrize('script', SCRIPTS)
def test_script_syntax(script):
    subprocess.run(['bash', '-n', script], cwd=REPO, check=True)


def dry_run(script, *args, **env):
    proc = subprocess.run(['bash', script, *args], cwd=REPO, capture_output=True, text=True,
                          env=clean_env(dict(DRY_RUN='1', **env)), check=True)
    return [shlex.split(line) for line in proc.stdout.strip().splitlines()]


def test_dist_train_dry_run():
    [cmd] = dry_run('tools/dist_train.sh', 'configs/x.py', '4', '--amp', '--cfg-options',
                    'a=b c', NNODES='2', NODE_RANK='1', PORT='29600', MASTER_ADDR='10.0.0.1',
                    PYTHON='py')
    assert cmd == ['py', '-m', 'torch.distributed.run', '--nnodes=2', '--node_rank=1',
                   '--nproc_per_node=4', '--master_addr=10.0.0.1', '--master_port=29600',
                   'tools/train.py', 'configs/x.py', '--launcher', 'pytorch', '--amp',
                   '--cfg-options', 'a=b c']
    [cmd] = dry_run('tools/dist_train.sh', 'c.py', '2')  # mmdet's defaults
    assert cmd[3:8] == ['--nnodes=1', '--node_rank=0', '--nproc_per_node=2',
                        '--master_addr=127.0.0.1', '--master_port=29500']


def test_dist_test_dry_run():
    [cmd] = dry_run('tools/dist_test.sh', 'c.py', 'e.pth', '2', '--out', 'p.pkl', PYTHON='py')
    assert cmd[-7:] == ['tools/test.py', 'c.py', 'e.pth', '--launcher', 'pytorch', '--out',
                        'p.pkl']
    assert '--nproc_per_node=2' in cmd


def test_slurm_train_dry_run():
    [cmd] = dry_run('tools/slurm_train.sh', 'gpu', 'dino', 'c.py', 'work_dirs/d', '--resume',
                    GPUS='16', CPUS_PER_TASK='6', SRUN_ARGS='--qos=high --signal=TERM@120',
                    PYTHON='py')
    assert cmd == ['srun', '-p', 'gpu', '--job-name=dino', '--gres=gpu:8', '--ntasks=16',
                   '--ntasks-per-node=8', '--cpus-per-task=6', '--kill-on-bad-exit=1',
                   '--qos=high', '--signal=TERM@120', 'py', '-u', 'tools/train.py', 'c.py',
                   '--work-dir=work_dirs/d', '--launcher=slurm', '--resume']
    [cmd] = dry_run('tools/slurm_train.sh', 'p', 'j', 'c.py', 'w', GPUS='2', GPUS_PER_NODE='1')
    assert '--gres=gpu:1' in cmd and '--ntasks=2' in cmd and '--ntasks-per-node=1' in cmd


def test_slurm_train_on_a_cpu_partition_asks_for_no_gpu():
    [cmd] = dry_run('tools/slurm_train.sh', 'cpu', 'j', 'c.py', 'w', GPUS='2',
                    GPUS_PER_NODE='0', CPUS_PER_TASK='1')
    assert cmd[:6] == ['srun', '-p', 'cpu', '--job-name=j', '--ntasks=2', '--cpus-per-task=1']
    assert not any(a.startswith(('--gres', '--ntasks-per-node')) for a in cmd)
    [cmd] = dry_run('tools/slurm_train.sh', 'cpu', 'j', 'c.py', 'w', GPUS='4',
                    GPUS_PER_NODE='0', TASKS_PER_NODE='2')
    assert '--ntasks-per-node=2' in cmd and not any(a.startswith('--gres') for a in cmd)


@pytest.mark.parametrize('env,names', [
    (dict(GPUS='0'), 'GPUS=0'), (dict(GPUS='two'), 'GPUS=two'),
    (dict(GPUS_PER_NODE='x'), 'GPUS_PER_NODE=x'), (dict(CPUS_PER_TASK='0'), 'CPUS_PER_TASK=0'),
    (dict(TASKS_PER_NODE='-1'), 'TASKS_PER_NODE=-1')])
def test_slurm_scripts_refuse_counts_in_one_line(env, names):
    proc = subprocess.run(['bash', 'tools/slurm_train.sh', 'p', 'j', 'c.py', 'w'], cwd=REPO,
                          capture_output=True, text=True, env=clean_env(dict(DRY_RUN='1', **env)))
    assert proc.returncode == 2
    [line] = proc.stderr.strip().splitlines()
    assert line.startswith('error: ') and names in line


def test_slurm_test_dry_run():
    [cmd] = dry_run('tools/slurm_test.sh', 'p', 'j', 'c.py', 'e.pth', '--out', 'x.pkl',
                    GPUS='4', PYTHON='py')
    assert cmd == ['srun', '-p', 'p', '--job-name=j', '--gres=gpu:4', '--ntasks=4',
                   '--ntasks-per-node=4', '--cpus-per-task=5', '--kill-on-bad-exit=1', 'py',
                   '-u', 'tools/test.py', 'c.py', 'e.pth', '--launcher=slurm', '--out', 'x.pkl']


def test_sbatch_preemptible_dry_run():
    train, resubmit = dry_run('tools/sbatch_preemptible.sh', 'c.py', 'work_dirs/d', '--wandb',
                              SBATCH_ARGS='--partition=other', RESUBMIT_COUNT='3',
                              PYTHON='py')
    assert train == ['srun', '--kill-on-bad-exit=1', 'py', '-u', 'tools/train.py', 'c.py',
                     '--work-dir=work_dirs/d', '--launcher=slurm', '--resume', 'auto',
                     '--wandb']
    assert resubmit == ['sbatch', '--export=ALL,RESUBMIT_COUNT=4,NO_PROGRESS_COUNT=0',
                        '--output=work_dirs/d/slurm-%x-%j.out', '--partition=other',
                        'tools/sbatch_preemptible.sh', 'c.py', 'work_dirs/d', '--wandb']
    text = open(os.path.join(REPO, 'tools/sbatch_preemptible.sh')).read()
    assert '#SBATCH --signal=B:USR1@' in text and 'PREEMPTED=75' in text


@pytest.mark.parametrize('script,nargs', [
    ('tools/dist_train.sh', 1), ('tools/dist_test.sh', 2), ('tools/slurm_train.sh', 3),
    ('tools/slurm_test.sh', 3), ('tools/sbatch_preemptible.sh', 1)])
def test_scripts_explain_missing_arguments(script, nargs):
    proc = subprocess.run(['bash', script, *['x'] * nargs], cwd=REPO, capture_output=True,
                          text=True, env=clean_env(dict(DRY_RUN='1')))
    assert proc.returncode == 2 and proc.stderr.startswith('usage:')
