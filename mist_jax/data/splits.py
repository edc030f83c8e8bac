"""Class-incremental splits: class order, label remapping, tasks, seeded per-class subsets.

docs/benchmarks.md / code utils/data_manager.py (DataManager._setup_data, __init__). All functions are
pure numpy on host: index bookkeeping, not math that needs jit.
"""

from __future__ import annotations

import numpy as np

DEFAULT_ORDER_SEED = 1993


def class_order(num_classes: int, seed: int = DEFAULT_ORDER_SEED) -> np.ndarray:
    """The shuffled class order of the authors' code.

    Same numbers as `np.random.seed(seed); np.random.permutation(num_classes)` (code
    utils/data_manager.py), without touching numpy's global random state.

    Args:
        num_classes: number of classes C >= 1.
        seed: shuffle seed (1993 in every MIST config).

    Returns:
        int64[C]: order[k] = original class id placed at position k.

    Raises:
        ValueError: num_classes < 1.
    """
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}.")
    return np.random.RandomState(seed).permutation(num_classes).astype(np.int64)


def remap_labels(labels: np.ndarray, order: np.ndarray) -> np.ndarray:
    """New label of each sample = position of its original class in `order`.

    Args:
        labels: int[N] original class ids, each in order.
        order: int[C], a permutation of 0..C-1 (from `class_order`).

    Returns:
        int64[N] remapped labels in [0, C).

    Raises:
        ValueError: `order` is not a permutation of 0..C-1, or a label is outside it.
    """
    order = np.asarray(order, np.int64)
    labels = np.asarray(labels, np.int64)
    num_classes = order.shape[0]
    if not np.array_equal(np.sort(order), np.arange(num_classes)):
        raise ValueError(f"order must be a permutation of 0..{num_classes - 1}.")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"labels must lie in [0, {num_classes}); got [{labels.min()}, {labels.max()}].")
    position = np.empty(num_classes, np.int64)
    position[order] = np.arange(num_classes)
    return position[labels]


def task_ranges(num_classes: int, init_cls: int, increment: int) -> list[tuple[int, int]]:
    """Class ranges [start, end) of each task in remapped label space.

    Code utils/data_manager.py: increments = [init_cls], then `increment` while the running sum
    plus `increment` stays below C, then the remainder (so 196 classes at 20/20 give nine tasks of
    20 and a last task of 16; 100 at 10/10 give ten tasks of 10).

    Args:
        num_classes: C.
        init_cls: classes in the first task, 1 <= init_cls <= C.
        increment: classes in each later task, >= 1.

    Returns:
        list of (start, end) int pairs covering 0..C contiguously.

    Raises:
        ValueError: init_cls outside [1, C] or increment < 1.
    """
    if not 1 <= init_cls <= num_classes:
        raise ValueError(f"init_cls must be in [1, {num_classes}], got {init_cls}.")
    if increment < 1:
        raise ValueError(f"increment must be >= 1, got {increment}.")
    sizes = [init_cls]
    while sum(sizes) + increment < num_classes:
        sizes.append(increment)
    if num_classes - sum(sizes) > 0:
        sizes.append(num_classes - sum(sizes))
    ends = np.cumsum(sizes)
    return [(int(e - s), int(e)) for s, e in zip(sizes, ends)]


def task_indices(labels: np.ndarray, task_range: tuple[int, int]) -> np.ndarray:
    """Indices of the samples whose remapped label lies in task_range = [start, end).

    Use on the training split for task t's own training data.

    Args:
        labels: int[N] remapped labels.
        task_range: (start, end) from `task_ranges`.

    Returns:
        int64[n] sorted sample indices.
    """
    start, end = task_range
    labels = np.asarray(labels)
    return np.flatnonzero((labels >= start) & (labels < end)).astype(np.int64)


def seen_indices(labels: np.ndarray, num_seen: int) -> np.ndarray:
    """Indices of the samples of all classes seen so far (remapped label < num_seen).

    Use on the test split for the evaluation after a task (num_seen = that task's `end`).

    Args:
        labels: int[N] remapped labels.
        num_seen: number of classes seen so far.

    Returns:
        int64[n] sorted sample indices.
    """
    return task_indices(labels, (0, num_seen))


def per_class_subsample(labels: np.ndarray, n_per_class: int, seed) -> np.ndarray:
    """At most `n_per_class` samples of each class, drawn without replacement, seeded.

    Classes with fewer samples keep all of theirs. One `np.random.default_rng(seed)` draws the
    classes in increasing label order, so the result depends only on (labels, n_per_class, seed).

    Args:
        labels: int[N] labels (original or remapped).
        n_per_class: samples kept per class, >= 1.
        seed: random seed: an int or a sequence of ints (``seeds.sequence``).

    Returns:
        int64[n] sorted sample indices.

    Raises:
        ValueError: n_per_class < 1.
    """
    if n_per_class < 1:
        raise ValueError(f"n_per_class must be >= 1, got {n_per_class}.")
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    keep = []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        keep.append(rng.permutation(idx)[:n_per_class])
    return np.sort(np.concatenate(keep)).astype(np.int64) if keep else np.zeros(0, np.int64)


def per_class_split(labels: np.ndarray, fraction: float = 0.8,
                    seed=DEFAULT_ORDER_SEED) -> tuple[np.ndarray, np.ndarray]:
    """Seeded per-class train/test split (for test-only sets such as ImageNet-R/A, docs/benchmarks.md).

    Each class's samples are shuffled with one `np.random.default_rng(seed)` (classes in
    increasing label order); the first round(fraction * n_c) go to train, the rest to test.

    Args:
        labels: int[N] labels.
        fraction: share of each class for train, in (0, 1).
        seed: random seed: an int or a sequence of ints (``seeds.sequence``).

    Returns:
        (train, test): two disjoint sorted int64 index arrays covering 0..N-1.

    Raises:
        ValueError: fraction outside (0, 1).
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}.")
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    train, test = [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_train = int(round(fraction * idx.size))
        train.append(idx[:n_train])
        test.append(idx[n_train:])
    return (np.sort(np.concatenate(train)).astype(np.int64),
            np.sort(np.concatenate(test)).astype(np.int64))
