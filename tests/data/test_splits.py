"""Class order, label remapping, task ranges and seeded per-class subsets (data/splits.py)."""

import numpy as np
import pytest

from mist_jax.data import splits


def test_cifar100_class_order_matches_spec():
    order = splits.class_order(100)
    # Official utils/data_manager.py: np.random.seed(1993); np.random.permutation(100)
    # (docs/benchmarks.md, "Class order and tasks").
    assert order[:10].tolist() == [68, 56, 78, 8, 23, 84, 90, 65, 74, 76]
    assert order[-10:].tolist() == [51, 48, 73, 93, 39, 67, 29, 49, 57, 33]
    assert sorted(order.tolist()) == list(range(100))


def test_class_order_equals_global_seed_recipe_and_leaves_global_state_alone():
    np.random.seed(7)
    before = np.random.get_state()[1].copy()
    order = splits.class_order(196)
    assert np.array_equal(np.random.get_state()[1], before)
    np.random.seed(1993)
    assert np.array_equal(order, np.random.permutation(196))


def test_remap_labels_by_hand():
    # order [2, 0, 1]: class 2 -> 0, class 0 -> 1, class 1 -> 2.
    got = splits.remap_labels(np.array([0, 1, 2, 2, 0]), np.array([2, 0, 1]))
    assert got.tolist() == [1, 2, 0, 0, 1]
    assert got.dtype == np.int64


def test_remap_of_the_order_itself_is_arange():
    order = splits.class_order(100)
    assert splits.remap_labels(order, order).tolist() == list(range(100))


@pytest.mark.parametrize("order,labels", [([0, 0, 1], [0]), ([0, 1], [2]), ([0, 1], [-1])])
def test_remap_labels_rejects_bad_input(order, labels):
    with pytest.raises(ValueError):
        splits.remap_labels(np.array(labels), np.array(order))


def test_task_ranges_cars_last_task_16():
    ranges = splits.task_ranges(196, 20, 20)
    assert len(ranges) == 10
    assert ranges[0] == (0, 20) and ranges[8] == (160, 180) and ranges[-1] == (180, 196)


@pytest.mark.parametrize("num_classes,init_cls,increment,expected", [
    (100, 10, 10, [(i, i + 10) for i in range(0, 100, 10)]),
    (30, 5, 5, [(0, 5), (5, 10), (10, 15), (15, 20), (20, 25), (25, 30)]),
    (10, 2, 3, [(0, 2), (2, 5), (5, 8), (8, 10)]),  # sizes 2, 3, 3 then remainder 2
    (10, 10, 5, [(0, 10)]),
    (7, 3, 10, [(0, 3), (3, 7)]),
])
def test_task_ranges_by_hand(num_classes, init_cls, increment, expected):
    assert splits.task_ranges(num_classes, init_cls, increment) == expected


@pytest.mark.parametrize("args", [(10, 0, 2), (10, 11, 2), (10, 2, 0)])
def test_task_ranges_rejects_bad_sizes(args):
    with pytest.raises(ValueError):
        splits.task_ranges(*args)


def test_task_and_seen_indices_by_hand():
    labels = np.array([3, 0, 5, 1, 4, 2, 5])
    assert splits.task_indices(labels, (2, 4)).tolist() == [0, 5]       # labels 3, 2
    assert splits.task_indices(labels, (4, 6)).tolist() == [2, 4, 6]    # labels 5, 4, 5
    assert splits.seen_indices(labels, 2).tolist() == [1, 3]            # labels 0, 1


def test_per_class_subsample_counts_and_determinism():
    labels = np.array([0] * 10 + [1] * 3 + [2] * 7)
    idx = splits.per_class_subsample(labels, 5, seed=0)
    assert np.bincount(labels[idx]).tolist() == [5, 3, 5]   # class 1 keeps all 3
    assert np.all(np.diff(idx) > 0)                          # sorted, no repeats
    assert np.array_equal(idx, splits.per_class_subsample(labels, 5, seed=0))
    draws = {tuple(splits.per_class_subsample(labels, 5, seed=s)) for s in range(5)}
    assert len(draws) > 1
    with pytest.raises(ValueError):
        splits.per_class_subsample(labels, 0, seed=0)


def test_per_class_split_sizes_disjoint_and_seeded():
    labels = np.array([0] * 10 + [1] * 5 + [2] * 3)
    train, test = splits.per_class_split(labels, 0.8, seed=3)
    # round(0.8 * n): 10 -> 8, 5 -> 4, 3 -> round(2.4) = 2.
    assert np.bincount(labels[train]).tolist() == [8, 4, 2]
    assert np.bincount(labels[test]).tolist() == [2, 1, 1]
    assert sorted(np.concatenate([train, test]).tolist()) == list(range(labels.size))
    again = splits.per_class_split(labels, 0.8, seed=3)
    assert np.array_equal(train, again[0]) and np.array_equal(test, again[1])
    other = {tuple(splits.per_class_split(labels, 0.8, seed=s)[1]) for s in range(6)}
    assert len(other) > 1
    with pytest.raises(ValueError):
        splits.per_class_split(labels, 1.0, seed=0)
