"""The run's batches: built as uint8 by ``data.workers`` grain workers (``data/pipeline.py``),
laid out on the mesh and finished to float32 there, prefetched two deep, with a progress bar
per epoch. Every random stream is keyed by seed sequences
``(config.seed, stream, task, epoch)`` (``infra/seeds.py``), so a resumed epoch replays the
same batches from where it stopped."""

from __future__ import annotations

import time
import weakref
from collections.abc import Callable, Iterator

import jax
import ml_collections
import numpy as np
import tqdm

from mist_jax.data import batches, pipeline, prefetch, transforms
from mist_jax.data.image_set import ImageSet
from mist_jax.infra import seeds
from mist_jax.infra.sharding import MeshContext


class Inputs:
    """Batches of one run. ``close()`` stops every prefetcher still running (a stopped or
    failed run leaves its epoch's generators suspended, their threads mid-batch).

    Args:
      cfg: the run config (``seed``, ``data`` for the transforms).
      mesh: where batches are laid out.
      progress: show a tqdm bar per epoch (``bar`` is the newest).
    """

    def __init__(self, cfg: ml_collections.ConfigDict, mesh: MeshContext, progress: bool):
        self.cfg, self.mesh, self.progress = cfg, mesh, progress
        self.train_transform, self.test_transform = transforms.get_transforms(cfg.data)
        self.workers = pipeline.resolve_workers(cfg.data.get("workers", 0))
        self._finish = {"train": pipeline.device_finish(self.train_transform.lut()),
                        "test": pipeline.device_finish(self.test_transform.lut())}
        self.bar = None
        self._prefetchers, self._streams = weakref.WeakSet(), weakref.WeakSet()
        #: Seconds spent waiting for batches (``*_wait``) and between them (``*_busy``: the
        #: steps, for loops that block on each one) of train epochs and test passes.
        self.seconds = dict.fromkeys(("train_wait", "train_busy", "test_wait", "test_busy"), 0.0)

    def batches(self, images: ImageSet, idx: np.ndarray, labels: np.ndarray, batch: int):
        """One pass in order through the test transform: global batches on the mesh
        (float32[B, S, S, 3] images, int32[B] labels) (``data.batches.BatchMaker``)."""
        maker = batches.batch_maker(images, idx, labels, batch, self.test_transform,
                                    local_rows=self.mesh.local_rows)
        return self._on_mesh(pipeline.pixel_batches(maker, 0, self.workers), self._finish["test"],
                             "test")

    def epochs(self, images: ImageSet, idx: np.ndarray, labels: np.ndarray, batch: int,
               prefix: str, t: int, epochs: int, keys: Callable[[int], jax.Array] | None = None,
               desc: Callable[[int], str] = str, drop_last: bool = False
               ) -> Callable[[int, int], Iterator]:
        """``(e, start) -> iterator`` of epoch e's global batches on the mesh from batch
        ``start`` on (resuming inside an epoch): (float32[B, S, S, 3] images in [0, 1],
        int32[B] labels[, PRNG key]), shuffled, train transform, seed sequences
        ``(config.seed, prefix + "order" | prefix + "transform", t, e)``, the ``epochs``
        epochs built by one ``pipeline.EpochStream``. ``keys(e)``: batch b of epoch e also
        gets ``fold_in(keys(e), b)``. ``desc(e)``: the progress bar's title. ``drop_last``:
        full batches only (``data.batches.BatchMaker``)."""
        def maker(e):
            return batches.batch_maker(
                images, idx, labels, batch, self.train_transform,
                seeds.sequence(self.cfg.seed, prefix + "order", t, e),
                seeds.sequence(self.cfg.seed, prefix + "transform", t, e), self.mesh.local_rows,
                drop_last)

        stream = pipeline.EpochStream(maker, epochs, self.workers)
        self._streams.add(stream)

        def epoch_batches(e: int, start: int) -> Iterator:
            host = stream(e, start)
            if keys is not None:
                host = batches.with_keys(host, keys(e), start)
            host = self.bar = tqdm.tqdm(host, desc=desc(e), leave=False, initial=start,
                                        disable=not self.progress,
                                        total=len(stream.maker_of(e)))
            return self._on_mesh(host, self._finish["train"], "train")

        return epoch_batches

    def _on_mesh(self, host: Iterator, finish: Callable, kind: str) -> Iterator:
        """Host batches (n, (uint8 images, labels, ...)) laid out on the mesh and finished
        there, prepared two ahead in a thread."""
        def put(b):  # uint8 to the devices, then / 255 (and Normalize) there
            x, *rest = self.mesh.put_batch(b[1], b[0])
            return (finish(x), *rest)

        gen = prefetch.prefetch(host, put, size=2)
        self._prefetchers.add(gen)
        return self._clocked(gen, kind)

    def _clocked(self, gen: Iterator, kind: str) -> Iterator:
        """``gen``, adding to ``seconds[kind + "_wait"]`` the time spent waiting for each batch
        and to ``seconds[kind + "_busy"]`` the time between batches (the consumer's step)."""
        last = None
        try:
            while True:
                t0 = time.perf_counter()
                if last is not None:
                    self.seconds[kind + "_busy"] += t0 - last
                try:
                    item = next(gen)
                except StopIteration:
                    return
                finally:
                    last = time.perf_counter()
                    self.seconds[kind + "_wait"] += last - t0
                yield item
        finally:
            gen.close()

    def close(self) -> None:
        """Stop every prefetcher, then every stream's workers."""
        for gen in list(self._prefetchers):
            gen.close()
        for stream in list(self._streams):
            stream.close()
