"""Named CIL metrics against hand-computed values (metrics.py; docs/benchmarks.md, "Metrics")."""

import numpy as np
import pytest

from mist_jax.runner import metrics

# Three tasks. Row i = accuracies on tasks 0..i after learning task i.
ACC = [[90.0],
       [80.0, 70.0],
       [60.0, 50.0, 40.0]]
TOP1 = [90.0, 75.0, 50.0]
TOP5 = [100.0, 95.0, 85.0]


def test_summarize_by_hand():
    out = metrics.summarize(ACC, TOP1, TOP5)
    assert tuple(out) == metrics.METRIC_KEYS
    assert out["acc_matrix"] == ACC and out["top1_curve"] == TOP1 and out["top5_curve"] == TOP5
    # (90 + 75 + 50) / 3
    assert out["average_accuracy"] == pytest.approx(215.0 / 3.0)
    assert out["last_accuracy"] == 50.0
    # task 0: max(90, 80) - 60 = 30; task 1: max(70) - 50 = 20; mean 25.
    assert out["forgetting"] == pytest.approx(25.0)
    # (90 + 70 + 40) / 3
    assert out["new_task_accuracy"] == pytest.approx(200.0 / 3.0)


def test_forgetting_uses_best_earlier_row_not_first():
    # task 0: max(50, 70) - 65 = 5; task 1: max(80) - 90 = -10 (backward transfer); mean -2.5.
    acc = [[50.0], [70.0, 80.0], [65.0, 90.0, 30.0]]
    assert metrics.forgetting(acc) == pytest.approx(-2.5)


def test_single_task_forgetting_is_zero():
    out = metrics.summarize([[42.0]], [42.0], [99.0])
    assert out["forgetting"] == 0.0 and out["new_task_accuracy"] == 42.0


@pytest.mark.parametrize("acc,top1,top5", [
    ([[1.0], [1.0]], [1.0, 1.0], [1.0, 1.0]),      # row 1 too short
    (ACC, TOP1[:2], TOP5),                         # curve too short
    ([], [], []),
])
def test_summarize_rejects_bad_shapes(acc, top1, top5):
    with pytest.raises(ValueError):
        metrics.summarize(acc, top1, top5)


def test_accuracy_row_by_hand():
    # Tasks (0, 2) and (2, 4). Predictions (argmax) below vs labels.
    logits = np.array([
        [5, 1, 0, 0],   # label 0, pred 0 ok
        [0, 1, 2, 0],   # label 1, pred 2 wrong (confused with a task-1 class)
        [0, 0, 3, 1],   # label 2, pred 2 ok
        [0, 0, 0, 4],   # label 3, pred 3 ok
        [4, 0, 0, 1],   # label 3, pred 0 wrong
        [1, 0, 0, 0],   # label 0, pred 0 ok
    ], dtype=np.float32)
    labels = np.array([0, 1, 2, 3, 3, 0])
    # task 0: samples 0, 1, 5 -> 2 / 3; task 1: samples 2, 3, 4 -> 2 / 3.
    row = metrics.accuracy_row(logits, labels, [(0, 2), (2, 4)])
    assert row == pytest.approx([200.0 / 3.0, 200.0 / 3.0])


def test_accuracy_row_rejects_task_without_samples():
    with pytest.raises(ValueError, match="no test sample"):
        metrics.accuracy_row(np.zeros((2, 4)), np.array([0, 1]), [(0, 2), (2, 4)])


def test_topk_accuracy_by_hand():
    logits = np.array([[0.1, 0.5, 0.3, 0.2],    # ranking 1, 2, 3, 0
                       [0.9, 0.0, 0.05, 0.04],  # ranking 0, 2, 3, 1
                       [0.2, 0.3, 0.4, 0.1]])   # ranking 2, 1, 0, 3
    labels = np.array([2, 1, 3])
    assert metrics.topk_accuracy(logits, labels, 1) == 0.0
    assert metrics.topk_accuracy(logits, labels, 2) == pytest.approx(100.0 / 3.0)   # sample 0
    assert metrics.topk_accuracy(logits, labels, 3) == pytest.approx(100.0 / 3.0)
    assert metrics.topk_accuracy(logits, labels, 4) == 100.0
    assert metrics.topk_accuracy(logits, labels, 5) == 100.0   # fewer classes than k
    with pytest.raises(ValueError):
        metrics.topk_accuracy(logits, labels, 0)


def test_top1_of_topk_equals_argmax_accuracy():
    rng = np.random.default_rng(0)
    logits, labels = rng.normal(size=(50, 7)), rng.integers(0, 7, 50)
    expected = 100.0 * np.mean(np.argmax(logits, 1) == labels)
    assert metrics.topk_accuracy(logits, labels, 1) == pytest.approx(expected)
