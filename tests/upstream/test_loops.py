"""ResumableIterBasedTrainLoop and ResumableEpochBasedTrainLoop: a resume draws the batches
an uninterrupted run would have drawn, loads no image of the batches already trained, and
an epoch resumed inside counts its batches on."""
import pytest
import torch
from mmengine.hooks import Hook
from mmengine.runner import Runner
from mmengine.testing.runner_test_case import ToyModel
from torch.utils.data import Dataset

import projects.dino_dinov2  # noqa: F401  (registers the loops)
from projects.dino_dinov2.cli import install_checkpoint_loader

install_checkpoint_loader()  # resuming reads mmengine's classes under weights_only=True


LOADED = []  # the Runner deep-copies its dataset: the record lives here


class IndexDataset(Dataset):
    """10 items; records every index it loads in LOADED."""

    def __len__(self):
        return 10

    def __getitem__(self, i):
        LOADED.append(i)
        return dict(inputs=torch.tensor([float(i), 1.0]), data_samples=torch.tensor(1.0))


class RecordBatches(Hook):
    def __init__(self):
        self.batches = []
        self.places = []  # (epoch, batch_idx) as the hooks (the logger) see them

    def before_train_iter(self, runner, batch_idx, data_batch=None):
        self.batches.append(sorted(int(x[0]) for x in data_batch['inputs']))
        self.places.append((runner.epoch, batch_idx))


def _run(work_dir, sampler, max_iters, resume=False):
    dataset, record = IndexDataset(), RecordBatches()
    LOADED.clear()
    runner = Runner(
        model=ToyModel(), work_dir=str(work_dir), default_scope='mmdet',
        train_dataloader=dict(dataset=dataset, sampler=dict(type=sampler, shuffle=True),
                              batch_size=2, num_workers=0),
        train_cfg=dict(type='ResumableIterBasedTrainLoop', max_iters=max_iters),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.01)),
        default_hooks=dict(checkpoint=dict(type='CheckpointHook', by_epoch=False,
                                           interval=max_iters), logger=None),
        custom_hooks=[record], randomness=dict(seed=0), resume=resume,
        experiment_name=f'{sampler}_{max_iters}_{resume}')
    runner.train()
    return record.batches, list(LOADED)


@pytest.mark.parametrize('sampler', ['InfiniteSampler', 'DefaultSampler'])
@pytest.mark.parametrize('stop', [3, 7])  # inside the first pass over the data / the second
def test_resume_continues_the_data_stream_without_loading_it(sampler, stop, tmp_path):
    full, _ = _run(tmp_path / 'full', sampler, 9)
    first, _ = _run(tmp_path / 'cut', sampler, stop)
    assert first == full[:stop]
    rest, loaded = _run(tmp_path / 'cut', sampler, 9, resume=True)
    assert rest == full[stop:]
    # only the images of the batches trained after the resume were read
    assert sorted(loaded) == sorted(i for batch in full[stop:] for i in batch)


def _run_epochs(work_dir, max_epochs, resume_from=None, save_at=None):
    dataset, record = IndexDataset(), RecordBatches()
    LOADED.clear()
    checkpoint = (dict(type='CheckpointHook', by_epoch=False, interval=save_at) if save_at
                  else dict(type='CheckpointHook', interval=max_epochs))
    runner = Runner(
        model=ToyModel(), work_dir=str(work_dir), default_scope='mmdet',
        train_dataloader=dict(dataset=dataset, sampler=dict(type='DefaultSampler',
                                                            shuffle=True),
                              batch_size=2, num_workers=0),
        train_cfg=dict(type='ResumableEpochBasedTrainLoop', max_epochs=max_epochs),
        optim_wrapper=dict(optimizer=dict(type='SGD', lr=0.01)),
        default_hooks=dict(checkpoint=checkpoint, logger=None),
        custom_hooks=[record], randomness=dict(seed=0), resume=bool(resume_from),
        load_from=resume_from, experiment_name=f'epochs_{max_epochs}_{save_at}')
    runner.train()
    return record, list(LOADED)


@pytest.mark.parametrize('stop', [3, 5])  # inside the first epoch / after its last batch
def test_an_epoch_resumed_inside_continues_at_its_next_batch(stop, tmp_path):
    full, _ = _run_epochs(tmp_path / 'full', 2)  # 5 batches an epoch
    assert full.places == [(e, i) for e in range(2) for i in range(5)]
    _run_epochs(tmp_path / 'cut', 1, save_at=stop)  # iter_N.pth: N batches into epoch 1
    rest, loaded = _run_epochs(tmp_path / 'cut', 2, str(tmp_path / 'cut' / f'iter_{stop}.pth'))
    assert rest.batches == full.batches[stop:]
    assert rest.places == full.places[stop:]  # the epoch counts on from the next batch
    assert sorted(loaded) == sorted(i for batch in full.batches[stop:] for i in batch)
