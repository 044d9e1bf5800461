"""W&B through MMEngine's visualizer: scalars against iterations, resume ids, fallback.

Real wandb in offline mode, isolated under a tmp dir; the runs are read back from their
``.wandb`` files.
"""
import os.path as osp

import pytest
from mmengine.config import Config

from helpers import offline_runs, read_scalars, wandb_run
from projects.dino_dinov2.cli import enable_wandb
from projects.dino_dinov2.cli.wandb_setup import RUN_ID_FILE, wandb_init_kwargs

LOSS_KEYS = ('loss', 'loss_cls', 'loss_bbox', 'loss_iou')


@pytest.fixture(scope='module')
def wandb_runs(preempted_runs):
    """The preempted run's and the resumed run's W&B offline folders, read back."""
    runs = offline_runs(preempted_runs['wandb_dir'])
    return [wandb_run(r) for r in runs], runs


def test_one_run_per_job_and_the_resume_id_reuses_it(preempted_runs, wandb_runs):
    (first, second), dirs = wandb_runs  # exactly two: preempted, then resumed
    run_id = open(osp.join(preempted_runs['preempted']['work_dir'], RUN_ID_FILE)).read()
    assert first['run_id'] == second['run_id'] == run_id == preempted_runs['resumed']['run_id']
    assert all(d.endswith(run_id) for d in dirs)


def test_offline_run_holds_the_logged_scalars(preempted_runs, wandb_runs):
    (first, second), _ = wandb_runs
    scalars = read_scalars(preempted_runs['preempted']['work_dir'])
    rows = {int(r['iter']): r for r in first['history'] + second['history'] if 'loss' in r}
    assert sorted(rows) == sorted(scalars)  # every training log row, both runs
    for it, row in rows.items():
        for key in LOSS_KEYS + ('lr',):
            assert row[key] == pytest.approx(scalars[it][key], rel=1e-12), (it, key)
    # losses, lr and the COCO metrics are plotted against the iteration
    assert ('*', 'iter') in first['metrics']
    val = [r for r in second['history'] if 'coco/bbox_mAP' in r]
    assert len(val) == 1 and val[0]['iter'] == 8  # validation after the 8th iteration
    assert 0.0 <= val[0]['coco/bbox_mAP'] <= 1.0
    # the config is attached
    assert 'model' in first['config'] and 'train_dataloader' in first['config']


def test_training_goes_on_when_wandb_cannot_start(preempted_runs):
    ref = preempted_runs['reference']  # --wandb --wandb-mode online, no API key
    assert ref['returncode'] == 0, ref['log'][-3000:]
    assert 'W&B could not start' in ref['log']
    assert 'training goes on without W&B logging' in ref['log']
    assert len(read_scalars(ref['work_dir'])) == 8
    assert not osp.isfile(osp.join(ref['work_dir'], RUN_ID_FILE))


def test_flags_to_init_kwargs(tmp_path):
    kwargs = wandb_init_kwargs(project='p', group='g', job_type='train', entity='me',
                               mode='offline', resume_id='abc123')
    assert kwargs == dict(project='p', group='g', job_type='train', entity='me',
                          mode='offline', id='abc123', resume='allow',
                          allow_val_change=True)
    assert wandb_init_kwargs() == {}  # WANDB_MODE and wandb's defaults apply
    with pytest.raises(ValueError, match="'cloud'"):
        wandb_init_kwargs(mode='cloud')


def test_resume_reuses_the_run_recorded_in_the_work_dir(tmp_path):
    (tmp_path / RUN_ID_FILE).write_text('run42\n')
    cfg = Config(dict(work_dir=str(tmp_path),
                      visualizer=dict(type='DetLocalVisualizer',
                                      vis_backends=[dict(type='LocalVisBackend')])))
    assert enable_wandb(cfg, resume=True)['id'] == 'run42'
    types = [b['type'] for b in cfg.visualizer.vis_backends]
    assert types == ['LocalVisBackend', 'SafeWandbVisBackend']  # added once, local kept
    assert 'id' not in enable_wandb(cfg, resume=False)  # a fresh training: a new run
    assert [b['type'] for b in cfg.visualizer.vis_backends].count('SafeWandbVisBackend') == 1
    assert enable_wandb(cfg, resume=True, resume_id='given')['id'] == 'given'
