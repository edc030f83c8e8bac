"""Global batches of a run: seeded order and per-image augmentation, each process its own rows.

One scheme for every loop (MIST's scoring and tuning epochs, a learner's training epochs,
feature extraction and evaluation): with a seed sequence ``(config.seed, stream..., t, e)``
(mist_jax/infra/seeds.py) the batch order is ``default_rng(order_seq)`` and the train transform of
the image at shuffled position i draws from ``default_rng((*transform_seq, i))``, so the stream
depends neither on the batch size split over devices nor on the process count; without a seed,
images come in order through the deterministic test transform.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np

Rows = Callable[[int], slice]


def host_batches(images, idx: np.ndarray, labels: np.ndarray, batch: int, transform,
                 order_seq: tuple[int, ...] | None = None,
                 transform_seq: tuple[int, ...] | None = None,
                 local_rows: Rows = lambda n: slice(0, n), start: int = 0
                 ) -> Iterator[tuple[int, tuple]]:
    """``(global batch size, (images float32[b, S, S, 3], labels int32[b]))`` per batch, with b
    this process's rows of the global batch.

    Args:
      images: an ``ImageSet`` (sources.py).
      idx: int[N] indices into ``images``; labels: int[N] their (remapped) labels.
      batch: global batch size >= 1 (the last batch may be smaller).
      transform: ``(list of uint8 HWC images, rng) -> float32[n, S, S, 3]``.
      order_seq, transform_seq: seed sequences; both or neither (None: in order, ``transform``
        called once per batch with ``rng=None``, i.e. a deterministic test transform).
      local_rows: ``global size -> slice`` of the rows this process loads
        (``MeshContext.local_rows``).
      start: skip the first ``start`` batches without loading them (resuming inside an epoch:
        the remaining batches are those of the full pass, bit for bit).

    Raises:
      ValueError: batch < 1, or only one of the two seed sequences.
    """
    if batch < 1:
        raise ValueError(f"batch size must be >= 1, got {batch}.")
    if (order_seq is None) != (transform_seq is None):
        raise ValueError("Give both order_seq and transform_seq (train) or neither (test).")
    shuffle = order_seq is not None
    order = (np.random.default_rng(order_seq).permutation(len(idx)) if shuffle
             else np.arange(len(idx)))
    for first in range(start * batch, len(idx), batch):
        n = min(batch, len(idx) - first)
        pos = np.arange(first, first + n)[local_rows(n)]
        sel = order[pos]
        picked = images.take(idx[sel])
        if shuffle:
            x = np.concatenate([transform([im], np.random.default_rng((*transform_seq, int(p))))
                                for im, p in zip(picked, pos)])
        else:
            x = transform(picked)
        yield n, (x, np.asarray(labels)[sel].astype(np.int32))


def with_keys(batches: Iterator[tuple[int, tuple]], key: Any, start: int = 0
              ) -> Iterator[tuple[int, tuple]]:
    """Append ``jax.random.fold_in(key, b)`` to batch b (the views' randomness of MIST);
    ``start``: the index of the first batch given (``host_batches(start=...)``)."""
    for b, (n, out) in enumerate(batches, start=start):
        yield n, out + (jax.random.fold_in(key, b),)
