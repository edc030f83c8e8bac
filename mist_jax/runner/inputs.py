"""The run's batches: built as uint8 by ``data.workers`` grain workers (``data/pipeline.py``),
laid out on the mesh and finished to float32 there, prefetched two deep, with a progress bar
per epoch. Every random stream is keyed by seed sequences
``(config.seed, stream, task, epoch)`` (``infra/seeds.py``), so a resumed epoch replays the
same batches from where it stopped."""

from __future__ import annotations

import weakref

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
        self._prefetchers = weakref.WeakSet()

    def batches(self, images: ImageSet, idx: np.ndarray, labels: np.ndarray, batch: int,
                streams: tuple[str, int, int] | None = None, key: jax.Array | None = None,
                desc: str | None = None, start: int = 0):
        """Global batches on the mesh: (float32[B, S, S, 3] images in [0, 1], int32[B]
        labels[, PRNG key]) (``data.batches.BatchMaker``, ``data.pipeline``).

        ``streams = (prefix, t, e)``: shuffled, train transform, seed sequences
        ``(config.seed, prefix + "order" | prefix + "transform", t, e)``; None: in order, test
        transform. ``key``: batch b also gets ``fold_in(key, b)``. ``start``: skip the first
        batches (resuming inside an epoch). ``desc``: the progress bar's title.
        """
        seqs = {}
        if streams is not None:
            prefix, t, e = streams
            seqs = dict(order_seq=seeds.sequence(self.cfg.seed, prefix + "order", t, e),
                        transform_seq=seeds.sequence(self.cfg.seed, prefix + "transform", t, e))
        tf = self.train_transform if streams is not None else self.test_transform
        maker = batches.batch_maker(images, idx, labels, batch, tf,
                                    local_rows=self.mesh.local_rows, **seqs)
        host = pipeline.pixel_batches(maker, start, self.workers)
        if key is not None:
            host = batches.with_keys(host, key, start)
        if desc is not None:
            host = self.bar = tqdm.tqdm(host, desc=desc, leave=False, disable=not self.progress,
                                        initial=start, total=len(maker))
        finish = self._finish["test" if streams is None else "train"]

        def put(b):  # uint8 to the devices, then / 255 (and Normalize) there
            x, *rest = self.mesh.put_batch(b[1], b[0])
            return (finish(x), *rest)

        gen = prefetch.prefetch(host, put, size=2)
        self._prefetchers.add(gen)
        return gen

    def close(self) -> None:
        for gen in list(self._prefetchers):
            gen.close()
