"""A run's images: the splits loaded once, subsampled per class, remapped to the class order.

docs/benchmarks.md: class order ``np.random.seed(class_order_seed); permutation(C)``, tasks of
``init_cls`` then ``increment`` classes, an optional per-class subsample of train and test
images, and an optional validation split carved from the training images.
"""

from __future__ import annotations

from dataclasses import dataclass

import ml_collections
import numpy as np

from mist_jax.infra import seeds
from mist_jax.data import sources, splits


@dataclass
class TaskData:
    """The images of one run, subsampled and remapped once (labels = class-order positions)."""

    train: sources.ImageSet
    train_idx: np.ndarray  # indices into train (the per-class subsample)
    train_labels: np.ndarray  # remapped labels of train_idx
    test: sources.ImageSet
    test_idx: np.ndarray
    test_labels: np.ndarray
    order: np.ndarray
    ranges: list[tuple[int, int]]

    @property
    def num_classes(self) -> int:
        return self.train.num_classes

    @property
    def stamp(self) -> str:
        """Both splits' ``ImageSet.stamp`` (what the files are: paths, sizes, mtimes)."""
        return f"{self.train.stamp}:{self.test.stamp}"

    def task(self, t: int) -> tuple[np.ndarray, np.ndarray]:
        """Task t's training images: (int64 indices into ``train``, their remapped labels)."""
        pos = splits.task_indices(self.train_labels, self.ranges[t])
        return self.train_idx[pos], self.train_labels[pos]

    def seen(self, num_seen: int) -> np.ndarray:
        """Positions in ``test_idx`` of the test images of the first ``num_seen`` classes."""
        return splits.seen_indices(self.test_labels, num_seen)


def load_data(cfg: ml_collections.ConfigDict) -> TaskData:
    """Load the splits, fix the class order (docs/benchmarks.md) and subsample per class.

    With ``data.eval_split == "validation"`` the evaluation images are a seeded 20% of each
    class's training images, and training uses the other 80% (hyperparameter search).
    Raises: FileNotFoundError / ValueError from ``sources.load_dataset``; ValueError for an
    unknown ``data.eval_split``.
    """
    d = cfg.data
    kw = dict(data_dir=d.data_dir or None, manual_dir=d.manual_dir or None)
    train = sources.load_dataset(d.name, "train", **kw)
    order = splits.class_order(train.num_classes, d.class_order_seed)
    if d.eval_split == "validation":
        tr, va = splits.per_class_split(train.labels, 0.8, seed=seeds.sequence(cfg.seed, "split"))
        test, test_pool = train, va
        train_pool = tr
    elif d.eval_split == "test":
        test = sources.load_dataset(d.name, "test", **kw)
        train_pool, test_pool = np.arange(len(train)), np.arange(len(test))
    else:
        raise ValueError(f"data.eval_split must be 'test' or 'validation', got {d.eval_split!r}.")

    def pick(labels, pool, n):
        if not n:
            return pool
        return pool[splits.per_class_subsample(labels[pool], n,
                                               seed=seeds.sequence(cfg.seed, "subsample"))]

    train_idx = pick(train.labels, train_pool, d.train_per_class)
    test_idx = pick(test.labels, test_pool, d.test_per_class)
    return TaskData(train, train_idx, splits.remap_labels(train.labels[train_idx], order),
                    test, test_idx, splits.remap_labels(test.labels[test_idx], order), order,
                    splits.task_ranges(train.num_classes, d.init_cls, d.increment))
