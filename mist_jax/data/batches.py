"""Global batches of a run: seeded order and per-image augmentation, each process its own rows.

One scheme for every loop (MIST's scoring and tuning epochs, a learner's training epochs,
feature extraction and evaluation): with a seed sequence ``(config.seed, stream..., t, e)``
(mist_jax/infra/seeds.py) the batch order is ``default_rng(order_seq)`` and the train transform of
the image at shuffled position i draws from ``default_rng((*transform_seq, i))``, so the stream
depends neither on the batch size split over devices nor on the process count; without a seed,
images come in order through the deterministic test transform.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np

Rows = Callable[[int], slice]


def num_batches(n: int, batch: int, drop_last: bool = False) -> int:
    """Batches of a pass over ``n`` images in batches of ``batch``: ceil(n / batch), or with
    ``drop_last`` (full batches only, torch's ``DataLoader(drop_last=True)``) floor(n / batch).

    Raises:
      ValueError: ``drop_last`` with fewer images than one batch (the pass would have no step).
    """
    if drop_last and n < batch:
        raise ValueError(f"drop_last with {n} images and batch size {batch} leaves no batch: "
                         "lower the learner's batch_size or set its drop_last to False.")
    return n // batch if drop_last else -(-n // batch)


@dataclasses.dataclass(frozen=True)
class BatchMaker:
    """Batch b of one pass, as uint8 pixels: ``maker(b) -> (global size n, (uint8[m, S, S, 3],
    int32[m] labels))`` with m this process's rows of the n. Picklable (plain arrays and
    slices), so grain's worker processes build batches with it (``data/pipeline.py``); the
    image at shuffled position i is transformed with ``default_rng((*transform_seq, i))``
    whoever builds it.

    Attributes: images (an ``ImageSet``), idx / labels (int[N]), batch (global size),
    transform (a ``transforms`` transform), order (int[N] positions -> rows of idx),
    transform_seq (None: the deterministic test transform on the whole batch), rows (global
    size -> slice of this process's rows), drop_last (leave out the last partial batch, as
    torch's ``DataLoader(drop_last=True)``: the images at its shuffled positions skip the pass).
    """

    images: Any
    idx: np.ndarray
    labels: np.ndarray
    batch: int
    transform: Any
    order: np.ndarray
    transform_seq: tuple[int, ...] | None
    rows: dict[int, slice]
    drop_last: bool = False

    def __len__(self) -> int:
        return num_batches(len(self.idx), self.batch, self.drop_last)

    def __call__(self, b: int) -> tuple[int, tuple[np.ndarray, np.ndarray]]:
        first = int(b) * self.batch
        n = min(self.batch, len(self.idx) - first)
        pos = np.arange(first, first + n)[self.rows[n]]
        sel = self.order[pos]
        picked = self.images.take(self.idx[sel])
        if self.transform_seq is None:
            x = self.transform.pixels(picked)
        else:
            x = np.concatenate([self.transform.pixels(
                [im], np.random.default_rng((*self.transform_seq, int(p))))
                for im, p in zip(picked, pos)])
        return n, (x, np.asarray(self.labels)[sel].astype(np.int32))


def batch_maker(images, idx: np.ndarray, labels: np.ndarray, batch: int, transform,
                order_seq: tuple[int, ...] | None = None,
                transform_seq: tuple[int, ...] | None = None,
                local_rows: Rows = lambda n: slice(0, n), drop_last: bool = False
                ) -> BatchMaker:
    """The ``BatchMaker`` of a pass (arguments as ``host_batches``); ``drop_last``: only
    full batches (``BatchMaker.drop_last``).

    Raises:
      ValueError: batch < 1, only one of the two seed sequences, or ``drop_last`` with fewer
        images than one batch (``num_batches``).
    """
    if batch < 1:
        raise ValueError(f"batch size must be >= 1, got {batch}.")
    if (order_seq is None) != (transform_seq is None):
        raise ValueError("Give both order_seq and transform_seq (train) or neither (test).")
    n = len(idx)
    num_batches(n, batch, drop_last)
    order = (np.random.default_rng(order_seq).permutation(n) if order_seq is not None
             else np.arange(n))
    sizes = {batch} | ({n % batch} if n % batch and not drop_last else set())
    return BatchMaker(images, np.asarray(idx), np.asarray(labels), batch, transform, order,
                      None if transform_seq is None else tuple(transform_seq),
                      {size: local_rows(size) for size in sizes}, drop_last)


def host_batches(images, idx: np.ndarray, labels: np.ndarray, batch: int, transform,
                 order_seq: tuple[int, ...] | None = None,
                 transform_seq: tuple[int, ...] | None = None,
                 local_rows: Rows = lambda n: slice(0, n), start: int = 0
                 ) -> Iterator[tuple[int, tuple]]:
    """``(global batch size, (images float32[b, S, S, 3], labels int32[b]))`` per batch, with b
    this process's rows of the global batch, built in this thread (``BatchMaker`` then the
    transform's ``finish``).

    Args:
      images: an ``ImageSet`` (sources.py).
      idx: int[N] indices into ``images``; labels: int[N] their (remapped) labels.
      batch: global batch size >= 1 (the last batch may be smaller).
      transform: a transform of ``data/transforms.py`` (``pixels`` + ``finish``).
      order_seq, transform_seq: seed sequences; both or neither (None: in order, the
        deterministic test transform on each whole batch).
      local_rows: ``global size -> slice`` of the rows this process loads
        (``MeshContext.local_rows``).
      start: skip the first ``start`` batches without loading them (resuming inside an epoch:
        the remaining batches are those of the full pass, bit for bit).

    Raises:
      ValueError: batch < 1, or only one of the two seed sequences.
    """
    maker = batch_maker(images, idx, labels, batch, transform, order_seq, transform_seq,
                        local_rows)
    for b in range(start, len(maker)):
        n, (x, y) = maker(b)
        yield n, (transform.finish(x), y)


def with_keys(batches: Iterator[tuple[int, tuple]], key: Any, start: int = 0
              ) -> Iterator[tuple[int, tuple]]:
    """Append ``jax.random.fold_in(key, b)`` to batch b (the views' randomness of MIST);
    ``start``: the index of the first batch given (``host_batches(start=...)``)."""
    for b, (n, out) in enumerate(batches, start=start):
        yield n, out + (jax.random.fold_in(key, b),)
