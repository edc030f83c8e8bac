"""Class-incremental accuracy metrics, in percent (definitions: docs/benchmarks.md, "Metrics").

acc_matrix[i][j]: top-1 accuracy (%) on the test images of task j's classes after learning task
i (j <= i), stored as a list of rows, row i holding tasks 0..i. top1_curve[i] / top5_curve[i]:
top-1 / top-5 (%) on all seen classes after task i. Predictions are over all seen classes (no
task id). Pure numpy functions; logits may be numpy or JAX arrays.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

METRIC_KEYS = ("acc_matrix", "top1_curve", "top5_curve", "average_accuracy", "last_accuracy",
               "forgetting", "new_task_accuracy")


def topk_accuracy(logits, labels, k: int) -> float:
    """Share (%) of samples whose label is among the k largest logits.

    With fewer than k classes every label is among them (100%), unlike torch.topk which
    would fail; ties are broken by the lowest class index first (stable sort).

    Args:
      logits: float[N, C] scores over seen classes.
      labels: int[N] in [0, C).
      k: k >= 1.

    Returns:
      float in [0, 100].

    Raises:
      ValueError: k < 1, N == 0, or shape mismatch.
    """
    logits, labels = np.asarray(logits), np.asarray(labels)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}.")
    if logits.ndim != 2 or labels.shape != logits.shape[:1] or labels.size == 0:
        raise ValueError(f"Need logits [N, C] and labels [N] with N > 0; got {logits.shape}, "
                         f"{labels.shape}.")
    top = np.argsort(-logits, axis=1, kind="stable")[:, :k]
    return float(100.0 * np.mean(np.any(top == labels[:, None], axis=1)))


def accuracy_row(logits, labels, task_ranges_seen: Sequence[tuple[int, int]]) -> list[float]:
    """One acc_matrix row: top-1 (%) on each seen task's test samples, argmax over all classes.

    Args:
      logits: float[N, C] over all seen classes (C = task_ranges_seen[-1][1]).
      labels: int[N] remapped labels.
      task_ranges_seen: [(start, end)] of tasks 0..i.

    Returns:
      list of i + 1 floats in [0, 100].

    Raises:
      ValueError: a task has no test sample, or shape mismatch.
    """
    logits, labels = np.asarray(logits), np.asarray(labels)
    if logits.ndim != 2 or labels.shape != logits.shape[:1]:
        raise ValueError(f"Need logits [N, C] and labels [N]; got {logits.shape}, {labels.shape}.")
    correct = np.argmax(logits, axis=1) == labels
    row = []
    for t, (start, end) in enumerate(task_ranges_seen):
        in_task = (labels >= start) & (labels < end)
        if not in_task.any():
            raise ValueError(f"Task {t} (classes {start}..{end - 1}) has no test sample.")
        row.append(float(100.0 * np.mean(correct[in_task])))
    return row


def _check_matrix(acc_matrix) -> None:
    for i, row in enumerate(acc_matrix):
        if len(row) != i + 1:
            raise ValueError(f"acc_matrix row {i} must hold {i + 1} tasks, got {len(row)}.")


def average_accuracy(top1_curve: Sequence[float]) -> float:
    """A-bar = mean over tasks of top1_curve (%)."""
    return float(np.mean(top1_curve))


def last_accuracy(top1_curve: Sequence[float]) -> float:
    """top1_curve[-1] (%): accuracy on all classes after the last task."""
    return float(top1_curve[-1])


def forgetting(acc_matrix: Sequence[Sequence[float]]) -> float:
    """Mean over old tasks j < T-1 of (max_{i < T-1} acc[i][j] - acc[T-1][j]), in points.

    Defined as 0.0 when T == 1 (no old task). Can be negative (backward transfer).
    """
    _check_matrix(acc_matrix)
    last = len(acc_matrix) - 1
    if last == 0:
        return 0.0
    drops = [max(acc_matrix[i][j] for i in range(j, last)) - acc_matrix[last][j]
             for j in range(last)]
    return float(np.mean(drops))


def new_task_accuracy(acc_matrix: Sequence[Sequence[float]]) -> float:
    """Mean over tasks i of acc[i][i] (%): accuracy on each task right after learning it."""
    _check_matrix(acc_matrix)
    return float(np.mean([row[-1] for row in acc_matrix]))


def summarize(acc_matrix, top1_curve, top5_curve) -> dict:
    """All named metrics (docs/benchmarks.md, "Metrics") in one JSON-ready dict (keys: METRIC_KEYS).

    Raises:
      ValueError: ragged matrix or curves of a different length than the matrix.
    """
    _check_matrix(acc_matrix)
    if not len(acc_matrix) == len(top1_curve) == len(top5_curve) > 0:
        raise ValueError(f"Need T > 0 rows and curves of length T; got {len(acc_matrix)}, "
                         f"{len(top1_curve)}, {len(top5_curve)}.")
    return {
        "acc_matrix": [[float(a) for a in row] for row in acc_matrix],
        "top1_curve": [float(a) for a in top1_curve],
        "top5_curve": [float(a) for a in top5_curve],
        "average_accuracy": average_accuracy(top1_curve),
        "last_accuracy": last_accuracy(top1_curve),
        "forgetting": forgetting(acc_matrix),
        "new_task_accuracy": new_task_accuracy(acc_matrix),
    }
