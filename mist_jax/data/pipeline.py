"""The input pipeline on grain: batches built by worker processes as uint8, shipped to the
devices and finished there (ToTensor's / 255 and any Normalize as a [256, 3] lookup table), so
a host core decodes and crops while the accelerator steps and the transfer is a quarter of
float32's bytes.

``data.workers`` worker processes (``grain.IterDataset.mp_prefetch``; 0 = in this process)
each build whole batches with the pass's ``batches.BatchMaker``; the image at shuffled position
i always draws its augmentation from ``default_rng((*transform_seq, i))``, so the batches are
the same bits for any worker count, batch split or process count, and a pass resumed at batch
``start`` continues the uninterrupted one (the position is the loop's batch count, which
in-task checkpoints save).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Iterator

import grain
import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from mist_jax.data.batches import BatchMaker


_NO_SHARED_MEMORY = 2 ** 62  # bytes: every array is smaller


def resolve_workers(workers: int) -> int:
    """``data.workers``: -1 = all cores but one (at least 0), else itself (>= 0)."""
    if workers == -1:
        return max((os.cpu_count() or 1) - 1, 0)
    return workers


def _iterate(ds: grain.MapDataset, workers: int) -> Iterator:
    """Iterate ``ds`` in order, built by ``workers`` grain worker processes (0: here);
    closing the generator stops the workers."""
    # One reading thread per process (grain's default is 16 threads and 500 elements read
    # ahead: whole passes of batches in memory); the parallelism is the worker processes.
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=2))
    if workers > 0:
        if not flags.FLAGS.is_parsed():  # grain reads absl flags; a library caller has none
            flags.FLAGS.mark_as_parsed()
        # Batches come back pickled, not in shared memory: grain leaves the blocks of batches
        # still queued when a pass stops early (a stopped run) to the resource tracker, which
        # warns of leaks at exit. A batch is a few MB; the copy is not the bottleneck.
        it = grain.experimental.WithOptionsIterDataset(
            it, grain.experimental.DatasetOptions(min_shm_size=_NO_SHARED_MEMORY))
        it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers,
                                                         per_worker_buffer_size=2))
    it = iter(it)
    try:
        yield from it
    finally:
        close = getattr(it, "close", None)
        if close is not None:
            close()


def pixel_batches(maker: BatchMaker, start: int = 0, workers: int = 0
                  ) -> Iterator[tuple[int, tuple[np.ndarray, np.ndarray]]]:
    """``maker(b)`` for b = start .. len(maker) - 1, in order, built by ``workers`` grain worker
    processes (0: here). Closing the generator stops the workers.

    Raises: what ``maker`` raises (an unreadable image names its file; from a worker, grain
    re-raises it here).
    """
    return _iterate(grain.MapDataset.range(start, len(maker)).map(maker), workers)


@dataclasses.dataclass(frozen=True)
class _Epochs:
    """Element k of consecutive epochs' batches: epoch makers[i]'s batch, from batch
    ``start`` of the first (picklable, for the workers)."""

    makers: tuple[BatchMaker, ...]
    start: int

    def __len__(self) -> int:
        return sum(len(m) for m in self.makers) - self.start

    def __call__(self, k: int):
        k = int(k) + self.start
        for maker in self.makers:
            if k < len(maker):
                return maker(k)
            k -= len(maker)
        raise IndexError(k)


class EpochStream:
    """``(epoch, start) -> batches`` of a phase's epochs 0 .. ``epochs`` - 1 from one grain
    iterator, so worker processes start once per phase (seconds each time), not once per
    epoch. Asked for the batch that follows the last one handed out, it continues; asked for
    anything else (a resume, a pass stopped early), it starts again there. The batches are
    ``pixel_batches``' of each epoch's maker, bit for bit.

    Args:
      maker_of: epoch -> its ``BatchMaker`` (order and augmentation seeds of that epoch).
      epochs: the phase's number of epochs; workers: grain worker processes (0: here).
    """

    def __init__(self, maker_of, epochs: int, workers: int):
        self.epochs, self.workers = epochs, workers
        self.maker_of = functools.lru_cache(maxsize=None)(maker_of)
        self._it, self._next = None, None

    def __call__(self, epoch: int, start: int = 0) -> Iterator:
        if self._next != (epoch, start):
            self.close()
            makers = tuple(self.maker_of(e) for e in range(epoch, max(self.epochs, epoch + 1)))
            jobs = _Epochs(makers, start)
            self._it = _iterate(grain.MapDataset.range(len(jobs)).map(jobs), self.workers)
            self._next = (epoch, start)
        return self._epoch(epoch, start, len(self.maker_of(epoch)))

    def _epoch(self, epoch: int, start: int, n: int) -> Iterator:
        for b in range(start, n):
            item = next(self._it)
            self._next = (epoch, b + 1) if b + 1 < n else (epoch + 1, 0)
            yield item

    def close(self) -> None:
        """Stop the workers (the next call starts again)."""
        if self._it is not None:
            self._it.close()
        self._it, self._next = None, None


def device_finish(lut: np.ndarray):
    """A jitted ``uint8[B, S, S, 3] -> float32[B, S, S, 3]`` applying a transform's ``lut()``
    (float32 [256, 3]) on the device, laid out like its input: bit for bit the host's
    ``finish`` (a table lookup, not XLA's own division)."""
    table = jnp.asarray(lut, jnp.float32)
    channels = jnp.arange(3)
    return jax.jit(lambda x: table[x.astype(jnp.int32), channels])
