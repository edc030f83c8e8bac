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


def pixel_batches(maker: BatchMaker, start: int = 0, workers: int = 0
                  ) -> Iterator[tuple[int, tuple[np.ndarray, np.ndarray]]]:
    """``maker(b)`` for b = start .. len(maker) - 1, in order, built by ``workers`` grain worker
    processes (0: here). Closing the generator stops the workers.

    Raises: what ``maker`` raises (an unreadable image names its file; from a worker, grain
    re-raises it here).
    """
    ds = grain.MapDataset.range(start, len(maker)).map(maker).to_iter_dataset()
    if workers > 0:
        if not flags.FLAGS.is_parsed():  # grain reads absl flags; a library caller has none
            flags.FLAGS.mark_as_parsed()
        # Batches come back pickled, not in shared memory: grain leaves the blocks of batches
        # still queued when a pass stops early (a stopped run) to the resource tracker, which
        # warns of leaks at exit. A batch is a few MB; the copy is not the bottleneck.
        ds = grain.experimental.WithOptionsIterDataset(
            ds, grain.experimental.DatasetOptions(min_shm_size=_NO_SHARED_MEMORY))
        ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers,
                                                         per_worker_buffer_size=2))
    it = iter(ds)
    try:
        yield from it
    finally:
        close = getattr(it, "close", None)
        if close is not None:
            close()


def device_finish(lut: np.ndarray):
    """A jitted ``uint8[B, S, S, 3] -> float32[B, S, S, 3]`` applying a transform's ``lut()``
    (float32 [256, 3]) on the device, laid out like its input: bit for bit the host's
    ``finish`` (a table lookup, not XLA's own division)."""
    table = jnp.asarray(lut, jnp.float32)
    channels = jnp.arange(3)
    return jax.jit(lambda x: table[x.astype(jnp.int32), channels])
