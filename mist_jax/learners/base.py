"""The interface of freeze-based learners: classifiers fitted on frozen-backbone features.

docs/algorithm.md §1 and §9: after each task's sparse tuning the backbone is frozen and the
learner fits its classifier on features of the task's training images (test transform). A
learner is an immutable hyper-parameter object with three pure methods; its state is a pytree
(``flax.struct.dataclass``) that orbax can checkpoint. Labels are remapped (class-order
positions) and tasks arrive in order: task t covers classes [start, end) with start equal to
the number of classes seen before it.
"""

from __future__ import annotations

from typing import Any, Protocol

import jax
import numpy as np

State = Any


class Learner(Protocol):
    """init -> fit_task per task -> logits over all seen classes."""

    name: str

    def init(self, key: jax.Array, feature_dim: int) -> State:
        """Empty state for features of size `feature_dim` (key: the learner's randomness)."""

    def fit_task(self, state: State, features, labels, task_range: tuple[int, int]) -> State:
        """Add task classes [start, end) from features float32[N, D] and labels int32[N]."""

    def logits(self, state: State, features) -> jax.Array:
        """Scores float32[N, num_seen] over all classes seen so far (argmax = prediction)."""


def check_task(features, labels, task_range: tuple[int, int], num_seen: int,
               feature_dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Validate one task's inputs; returns (float32[N, D], int64[N]) numpy copies.

    Raises:
      ValueError: shapes, a task that does not start at `num_seen`, labels outside the task, or
        a task class without samples.
    """
    features = np.asarray(features, np.float32)
    labels = np.asarray(labels, np.int64)
    start, end = task_range
    if features.ndim != 2 or features.shape[1] != feature_dim:
        raise ValueError(f"features must be [N, {feature_dim}], got {features.shape}.")
    if labels.shape != features.shape[:1]:
        raise ValueError(f"labels must be [{features.shape[0]}], got {labels.shape}.")
    if start != num_seen or end <= start:
        raise ValueError(f"task_range {task_range} must start at the {num_seen} classes seen so "
                         "far and be non-empty (tasks are learned in order).")
    if labels.size == 0 or labels.min() < start or labels.max() >= end:
        raise ValueError(f"labels must be remapped labels in [{start}, {end}); got "
                         f"{'none' if labels.size == 0 else (labels.min(), labels.max())}.")
    missing = np.setdiff1d(np.arange(start, end), labels)
    if missing.size:
        raise ValueError(f"Task classes {missing.tolist()} have no training sample.")
    return features, labels
