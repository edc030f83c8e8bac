"""SimpleCIL, RanPAC and drift compensation against direct numpy computations."""

import jax
import numpy as np
import pytest
from ml_collections import ConfigDict

from mist_jax.learners import RanPAC, SimpleCIL, compensate_drift, get_learner
from mist_jax.learners.ranpac import RIDGES, ridge_validation_losses
from support.variants import VARIANTS


D = 12


def _task(rng, start, end, per_class, dim=D):
    labels = np.repeat(np.arange(start, end), per_class)
    centres = rng.normal(size=(end, dim)) * 2.0
    feats = centres[labels] + rng.normal(size=(labels.size, dim))
    perm = rng.permutation(labels.size)
    return feats[perm].astype(np.float32), labels[perm].astype(np.int32)


# ---------------------------------------------------------------- SimpleCIL


def test_simplecil_prototypes_are_class_means_and_old_ones_stay():
    rng = np.random.default_rng(0)
    learner = SimpleCIL()
    state = learner.init(jax.random.PRNGKey(0), D)
    x0, y0 = _task(rng, 0, 3, 7)
    state = learner.fit_task(state, x0, y0, (0, 3))
    expected0 = np.stack([x0[y0 == c].astype(np.float64).mean(0) for c in range(3)])
    np.testing.assert_allclose(np.asarray(state.prototypes), expected0, rtol=1e-5, atol=1e-6)
    before = np.asarray(state.prototypes).copy()
    x1, y1 = _task(rng, 3, 5, 4)
    state = learner.fit_task(state, x1, y1, (3, 5))
    assert state.prototypes.shape == (5, D)
    np.testing.assert_array_equal(np.asarray(state.prototypes[:3]), before)  # never recomputed
    expected1 = np.stack([x1[y1 == c].astype(np.float64).mean(0) for c in (3, 4)])
    np.testing.assert_allclose(np.asarray(state.prototypes[3:]), expected1, rtol=1e-5, atol=1e-6)


def test_simplecil_logits_are_cosines():
    rng = np.random.default_rng(1)
    learner = SimpleCIL()
    state = learner.fit_task(learner.init(None, D), *_task(rng, 0, 4, 5), (0, 4))
    x = rng.normal(size=(9, D)).astype(np.float32)
    p = np.asarray(state.prototypes, np.float64)
    expected = (x / np.linalg.norm(x, axis=1, keepdims=True)) @ (
        p / np.linalg.norm(p, axis=1, keepdims=True)).T
    np.testing.assert_allclose(np.asarray(learner.logits(state, x)), expected, atol=1e-5)


@pytest.mark.parametrize("labels,task_range,match", [
    ([0, 1, 1], (1, 3), "start at"),        # task does not start at num_seen = 0
    ([0, 1, 3], (0, 3), "remapped labels"),  # label outside the task
    ([0, 0, 2], (0, 3), "no training sample"),
])
def test_fit_task_rejects_bad_tasks(labels, task_range, match):
    learner = SimpleCIL()
    with pytest.raises(ValueError, match=match):
        learner.fit_task(learner.init(None, D), np.zeros((3, D)), np.array(labels), task_range)


# ---------------------------------------------------------------- RanPAC


def _brute_force_losses(h, y):
    """The code's optimise_ridge_parameter: 17 dense solves on the first 80%."""
    n = int(h.shape[0] * 0.8)
    g, q = h[:n].T @ h[:n], h[:n].T @ y[:n]
    return np.array([np.mean((h[n:] @ np.linalg.solve(g + r * np.eye(g.shape[0]), q) - y[n:]) ** 2)
                     for r in RIDGES])


@pytest.mark.parametrize("n,m", [(200, 20), (60, 90)])  # primal (n >= M) and dual (n < M) paths
def test_ridge_losses_match_seventeen_dense_solves(n, m):
    rng = np.random.default_rng(n)
    x = rng.normal(size=(n, 6))
    h = np.maximum(x @ rng.normal(size=(6, m)), 0.0)
    y = np.eye(3)[np.argmax(x[:, :3] + 0.8 * rng.normal(size=(n, 3)), axis=1)]
    got, want = ridge_validation_losses(h, y), _brute_force_losses(h, y)
    big = np.asarray(RIDGES) >= 1e-4  # tiny ridges on a rank-deficient G: both ill-conditioned
    np.testing.assert_allclose(got[big], want[big], rtol=1e-7)
    np.testing.assert_allclose(got, want, rtol=1e-4)
    assert np.argmin(got) == np.argmin(want)
    assert 0 < np.argmin(want) < len(RIDGES) - 1  # an interior optimum: the search matters


def test_ridge_losses_need_two_samples():
    with pytest.raises(ValueError, match=">= 2 samples"):
        ridge_validation_losses(np.ones((1, 4)), np.ones((1, 2)))


def test_ranpac_matches_numpy_over_two_tasks():
    rng = np.random.default_rng(2)
    m = 48
    learner = RanPAC(num_projections=m)
    state = learner.init(jax.random.PRNGKey(3), D)
    w_rand = np.asarray(state.w_rand, np.float64)
    assert w_rand.shape == (D, m)
    assert abs(w_rand.mean()) < 0.2 and 0.8 < w_rand.std() < 1.2   # N(0, 1)
    g, q = np.zeros((m, m)), np.zeros((m, 0))
    for start, end in [(0, 3), (3, 5)]:
        x, y = _task(rng, start, end, 15)
        key_before = state.key
        state = learner.fit_task(state, x, y, (start, end))
        np.testing.assert_array_equal(np.asarray(state.w_rand), w_rand.astype(np.float32))  # fixed
        h = np.maximum(x.astype(np.float64) @ w_rand, 0.0)
        onehot = np.eye(end)[y]                    # over all seen classes
        g, q = g + h.T @ h, np.pad(q, ((0, 0), (0, end - q.shape[1]))) + h.T @ onehot
        # h is projected in float32 (like the code), then accumulated in float64.
        np.testing.assert_allclose(state.gram, g, rtol=1e-5, atol=1e-6 * np.abs(g).max())
        np.testing.assert_allclose(state.q, q, rtol=1e-5, atol=1e-6 * np.abs(q).max())
        # Lambda: brute force on this task only, samples shuffled by the documented key rule.
        perm = np.asarray(jax.random.permutation(jax.random.split(key_before)[1], y.size))
        losses = _brute_force_losses(h[perm], np.eye(end - start)[y[perm] - start])
        assert state.ridges[-1] == RIDGES[int(np.argmin(losses))]
        w = np.linalg.solve(g + state.ridges[-1] * np.eye(m), q).T
        np.testing.assert_allclose(np.asarray(state.weight), w, rtol=2e-3,
                                   atol=2e-3 * np.abs(w).max())
    xt = rng.normal(size=(7, D)).astype(np.float32)
    expected = np.maximum(xt.astype(np.float64) @ w_rand, 0.0) @ w.T
    np.testing.assert_allclose(np.asarray(learner.logits(state, xt)), expected, rtol=2e-3,
                               atol=2e-3 * np.abs(expected).max())
    assert state.ridges.shape == (2,)


def test_ranpac_accepts_typed_keys_and_states_are_pytrees():
    state = RanPAC(num_projections=8).init(jax.random.key(0), 4)
    leaves, tree = jax.tree.flatten(state)
    assert len(leaves) == 6
    assert jax.tree.unflatten(tree, leaves).w_rand.shape == (4, 8)


def test_get_learner_registry():
    assert isinstance(get_learner("simplecil"), SimpleCIL)
    assert get_learner("ranpac", ConfigDict({"num_projections": 16})).num_projections == 16
    with pytest.raises(ValueError, match="Unknown learner"):
        get_learner("no_such_learner")
    with pytest.raises(ValueError, match="Bad config"):
        get_learner("ranpac", ConfigDict({"M": 3}))


# ---------------------------------------------------------------- drift compensation


def _sdc_loop(protos, before, after, sigma):
    """Direct transcription of SDC (Yu et al. 2020, code test.py `displacement`)."""
    out = []
    for p in protos.astype(np.float64):
        w = np.array([np.exp(-np.sum((b - p) ** 2) / (2 * sigma**2)) for b in before])
        drift = sum(wi * (a - b) for wi, a, b in zip(w, after, before)) / w.sum()
        out.append(p + drift)
    return np.stack(out)


@pytest.mark.parametrize("variant", VARIANTS)
def test_matches_direct_loop(variant):
    rng = np.random.default_rng(4)
    before = rng.normal(size=(30, 5)) * 0.3
    after = before + 0.1 + 0.05 * rng.normal(size=before.shape)
    protos = rng.normal(size=(4, 5)) * 0.3
    fn = variant(compensate_drift)
    for sigma in (0.3, 1.0):
        got = np.asarray(fn(protos, before, after, sigma))
        np.testing.assert_allclose(got, _sdc_loop(protos, before, after, sigma), atol=1e-5)


@pytest.mark.parametrize("variant", VARIANTS)
def test_far_prototype_stays_finite_and_follows_nearest_sample(variant):
    before = np.array([[0.0, 0.0], [10.0, 0.0]])
    after = before + np.array([[1.0, 0.0], [0.0, 2.0]])
    got = np.asarray(variant(compensate_drift)(np.array([[100.0, 0.0]]), before, after))
    # All Gaussian weights underflow in the original; the nearest sample (10, 0) dominates.
    np.testing.assert_allclose(got, [[100.0, 2.0]], atol=1e-5)


def test_finetune_predicts_with_the_installed_classifier_over_seen_classes():
    from mist_jax.learners import get_learner

    rng = np.random.RandomState(0)
    learner = get_learner("finetune", num_classes=6)
    state = learner.init(jax.random.key(0), 4)
    head = {"kernel": rng.randn(4, 6).astype(np.float32), "bias": rng.randn(6).astype(np.float32)}
    state = learner.with_classifier(state, head)
    feats = rng.randn(5, 4).astype(np.float32)
    state = learner.fit_task(state, feats, np.array([0, 1, 2, 0, 1]), (0, 3))
    want = feats @ head["kernel"][:, :3] + head["bias"][:3]  # direct numpy affine map
    np.testing.assert_allclose(learner.logits(state, feats), want, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="kernel"):
        learner.with_classifier(state, {"kernel": np.zeros((4, 5)), "bias": np.zeros(5)})
