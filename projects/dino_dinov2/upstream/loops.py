"""Training loops that resume inside the data without reloading what they trained on.

Upstream: open-mmlab/mmengine#1520 (open; the fixes proposed, #1548 and #1608, are not
merged in 0.10.7). Delete :class:`ResumableIterBasedTrainLoop` when mmengine's loop skips
the trained batches at the sampler, :class:`ResumableEpochBasedTrainLoop` when mmengine's
epoch loop continues an epoch it resumed inside (0.10.7 restarts it at its first batch and
counts its iterations again), and :func:`release_dataloader_workers` when a Runner
stops its dataloaders' workers itself (mmengine 0.10.7 leaves them to the garbage
collector).

mmengine's ``IterBasedTrainLoop`` resumes at iteration N by calling ``next()`` on its
dataloader N times: every image already trained on is read, decoded and augmented again
before training goes on. At the recipe's scale (90,000 iterations, batch 2 per process) a
job preempted near the end spends an hour re-reading ~160,000 images per process.
:class:`ResumableIterBasedTrainLoop` is that loop with the replay replaced by positioning
the sampler: the batches already trained are drawn as indices only and thrown away
(:class:`SkipFirstBatches`), so the batches that follow are the ones an uninterrupted run
would have drawn, and no image is loaded for the skipped ones.

With a finite sampler (mmengine's ``DefaultSampler``, passes over the data) whole passes
are skipped by setting the sampler's epoch, then the rest of the pass at the batch level;
with ``InfiniteSampler`` (the recipe's) the stream's first N batches are drawn and dropped.
:class:`ResumableEpochBasedTrainLoop` does the same inside the interrupted epoch, and counts
its batches on from there (the log's ``[2][6/8]``; the epoch's last batch ends it as usual).
"""
from __future__ import annotations

import logging
from typing import Callable, List, Optional, Tuple

from mmengine.dataset import InfiniteSampler
from mmengine.logging import print_log
from mmengine.runner import EpochBasedTrainLoop, IterBasedTrainLoop
from mmengine.runner.base_loop import BaseLoop
from mmengine.runner.loops import _InfiniteDataloaderIterator
from mmengine.runner.utils import calc_dynamic_intervals

from mmdet.registry import LOOPS

from .runner import built_loops


class SkipFirstBatches:
    """A batch sampler that drops the first ``skip`` batches of another one, once.

    The indices of skipped batches are drawn and thrown away (cheap: no data is loaded),
    so the batches that follow are exactly those the full pass would have given. After
    the first pass it passes every batch through (``skip`` is reset), so it can stay in
    place for the passes that follow. Its length is the whole pass's, so the batches that
    follow keep their places in it (``enumerate(loader, skip)``). ``on_start`` runs right
    before the first remaining batch is drawn, i.e. after the DataLoader iterator was
    created.
    """

    def __init__(self, batch_sampler, skip: int, on_start: Optional[Callable[[], None]] = None):
        self.batch_sampler = batch_sampler
        self.skip = skip
        self.on_start = on_start

    def __iter__(self):
        it = iter(self.batch_sampler)
        for _ in range(self.skip):
            if next(it, None) is None:
                break
        self.skip = 0
        if self.on_start is not None:
            on_start, self.on_start = self.on_start, None
            on_start()
        yield from it

    def __len__(self) -> int:
        return len(self.batch_sampler)

    def __getattr__(self, name):
        # sampler, batch_size, drop_last... of the wrapped batch sampler
        return getattr(self.__dict__['batch_sampler'], name)


def data_sampler(dataloader):
    """The sampler that orders the data (the batch sampler's, when there is one)."""
    batch_sampler = getattr(dataloader, 'batch_sampler', None)
    return getattr(batch_sampler, 'sampler', None) or dataloader.sampler


@LOOPS.register_module()
class ResumableIterBasedTrainLoop(IterBasedTrainLoop):
    """mmengine's ``IterBasedTrainLoop``; a resume skips the trained batches unloaded.

    Same arguments as ``IterBasedTrainLoop``. The dataloader's iterator is created when
    the loop starts, after the resume (mmengine creates it in ``__init__``, before the
    checkpoint is read, and a second iterator would close mmengine's ``InfiniteSampler``,
    whose index stream is a single generator). ``on_data_resumed`` (set by a hook before
    the loop starts, e.g. :class:`PreemptionHook` restoring RNG states) is called right
    before the first batch after the skipped ones is drawn.
    """

    def __init__(self,
                 runner,
                 dataloader,
                 max_iters: int,
                 val_begin: int = 1,
                 val_interval: int = 1000,
                 dynamic_intervals: Optional[List[Tuple[int, int]]] = None) -> None:
        # IterBasedTrainLoop.__init__ without its dataloader iterator
        BaseLoop.__init__(self, runner, dataloader)
        self._max_iters = int(max_iters)
        if self._max_iters != max_iters:
            raise ValueError(f'max_iters must be an integer, got {max_iters!r}')
        self._max_epochs = 1  # for compatibility with EpochBasedTrainLoop
        self._epoch = 0
        self._iter = 0
        self.val_begin = val_begin
        self.val_interval = val_interval
        self.stop_training = False  # EarlyStoppingHook sets it
        if hasattr(self.dataloader.dataset, 'metainfo'):
            self.runner.visualizer.dataset_meta = self.dataloader.dataset.metainfo
        self.dynamic_milestones, self.dynamic_intervals = calc_dynamic_intervals(
            self.val_interval, dynamic_intervals)
        self.dataloader_iterator: Optional[_InfiniteDataloaderIterator] = None
        self.on_data_resumed: Optional[Callable[[], None]] = None

    def run(self):
        """mmengine's ``run`` with :meth:`skip_trained_batches` in place of the replay."""
        self.runner.call_hook('before_train')
        # mmengine treats the whole iteration-based run as one big epoch
        self.runner.call_hook('before_train_epoch')
        passes = self.skip_trained_batches(self._iter) if self._iter > 0 else 0
        self.dataloader_iterator = _InfiniteDataloaderIterator(self.dataloader)
        self.dataloader_iterator._epoch = passes
        while self._iter < self._max_iters and not self.stop_training:
            self.runner.model.train()
            data_batch = next(self.dataloader_iterator)
            self.run_iter(data_batch)
            self._decide_current_val_interval()
            if (self.runner.val_loop is not None and self._iter >= self.val_begin
                    and (self._iter % self.val_interval == 0
                         or self._iter == self._max_iters)):
                self.runner.val_loop.run()
        self.runner.call_hook('after_train_epoch')
        self.runner.call_hook('after_train')
        return self.runner.model

    def skip_trained_batches(self, done: int) -> int:
        """Position the data after ``done`` batches without loading them (before the
        dataloader's iterator exists); returns the passes over the data completed."""
        dataloader = self.dataloader
        sampler = data_sampler(dataloader)
        passes, within = 0, done
        if not isinstance(sampler, InfiniteSampler) and hasattr(sampler, 'set_epoch'):
            passes, within = divmod(done, len(dataloader))
            sampler.set_epoch(passes)
        if dataloader.batch_sampler is None:  # batch_size=None loaders: nothing to wrap
            print_log(f'Resuming at iteration {done}: this dataloader has no batch sampler; '
                      'the data restarts from its first batch', logger='current',
                      level=logging.WARNING)
            return passes
        # DataLoader refuses a new batch_sampler after construction; no iterator exists yet
        object.__setattr__(dataloader, 'batch_sampler', SkipFirstBatches(
            dataloader.batch_sampler, within, self.on_data_resumed))
        print_log(f'Resuming at iteration {done}: skipped the {done} batches already '
                  'trained at the sampler (no image loaded for them)', logger='current')
        return passes


@LOOPS.register_module()
class ResumableEpochBasedTrainLoop(EpochBasedTrainLoop):
    """mmengine's ``EpochBasedTrainLoop``; a resume inside an epoch continues that epoch.

    Same arguments as ``EpochBasedTrainLoop``. The batches of the interrupted epoch already
    trained are skipped at the sampler (no image loaded for them) and the epoch counts on
    from the next one; ``on_data_resumed`` (set by a hook before the epoch starts, e.g.
    :class:`PreemptionHook` restoring RNG states) is called right before it is drawn.
    """

    def __init__(self,
                 runner,
                 dataloader,
                 max_epochs: int,
                 val_begin: int = 1,
                 val_interval: int = 1,
                 dynamic_intervals: Optional[List[Tuple[int, int]]] = None) -> None:
        super().__init__(runner, dataloader, max_epochs, val_begin, val_interval,
                         dynamic_intervals)
        self.on_data_resumed: Optional[Callable[[], None]] = None

    def run_epoch(self) -> None:
        self.runner.call_hook('before_train_epoch')
        self.runner.model.train()
        dataloader = self.dataloader
        done = self._iter - self._epoch * len(dataloader)
        unwrapped = dataloader.batch_sampler
        # done == len: stopped after the epoch's last batch, before its end (checkpoint,
        # validation): no batch is left, the epoch's end runs
        if 0 < done <= len(dataloader) and unwrapped is not None:
            object.__setattr__(dataloader, 'batch_sampler', SkipFirstBatches(
                unwrapped, done, self.on_data_resumed))
            print_log(f'Resuming inside epoch {self._epoch + 1}: skipped the {done} batches '
                      'already trained at the sampler (no image loaded for them)',
                      logger='current')
        elif done:
            print_log(f'Resuming inside epoch {self._epoch + 1} after {done} batches: this '
                      'dataloader cannot skip them; the epoch restarts from its first batch',
                      logger='current', level=logging.WARNING)
            done = 0
        self.on_data_resumed = None
        try:
            for idx, data_batch in enumerate(dataloader, done):
                self.run_iter(idx, data_batch)
        finally:
            object.__setattr__(dataloader, 'batch_sampler', unwrapped)
        self.runner.call_hook('after_train_epoch')
        self._epoch += 1


def release_dataloader_workers(runner) -> None:
    """Stop the worker processes of the runner's dataloaders now.

    A Runner is held in reference cycles, so its dataloaders' iterators are freed by the
    garbage collector, which may finalize their queues first: the workers then miss the
    stop message and torch waits 5 s for each of them (40 s for the recipe's 4 training
    and 4 validation workers). Harmless at interpreter exit; a second run in the same
    process (a notebook, a sweep, the tests) would stall. Called by the tools after
    training and testing.
    """
    from torch.utils.data.dataloader import _MultiProcessingDataLoaderIter
    iterators = []
    for loop in built_loops(runner):
        infinite = getattr(loop, 'dataloader_iterator', None)
        iterators.append(getattr(infinite, '_iterator', None))
        loader = getattr(loop, 'dataloader', None)
        iterators.append(getattr(loader, '_iterator', None))  # persistent workers
        if getattr(loader, '_iterator', None) is not None:
            loader._iterator = None
    for it in iterators:
        if isinstance(it, _MultiProcessingDataLoaderIter):
            it._shutdown_workers()
