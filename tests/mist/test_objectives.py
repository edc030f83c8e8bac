"""MI objective and ablation losses against NumPy transcriptions and hand-computed values."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mist_jax.mist import objectives
from support.variants import VARIANTS


# --------------------------------------------------------------------------- numpy references
def np_mi_loss(z, labels, tau=0.07, eps=1e-8):
    """Direct float64 transcription of docs/algorithm.md §2 (= the official
    utils/contrastive_learning.py Supervised_NT_xent_n)."""
    z = np.asarray(z, np.float64)
    n = z.shape[0]
    b = n // 2
    s = z @ z.T
    s = s - s.max(axis=1, keepdims=True)
    e = np.exp(s / tau) * (1 - np.eye(n))
    p = e / (e.sum(axis=1, keepdims=True) + eps)
    l = -np.log(p + eps)
    y = np.concatenate([labels, labels])
    m = (y[:, None] == y[None, :]).astype(np.float64)
    w = m / (m.sum(axis=1, keepdims=True) + eps)
    pair = sum(l[i, i + b] + l[i + b, i] for i in range(b)) / (2 * b)
    return pair + (w * l).sum() / b


def np_supcon(z, labels, tau=0.07):
    """Khosla et al. (2020) Eq. 2, L_out, with explicit loops."""
    z = np.asarray(z, np.float64)
    n = z.shape[0]
    y = np.concatenate([labels, labels])
    s = z @ z.T / tau
    total = 0.0
    for i in range(n):
        others = [k for k in range(n) if k != i]
        log_denom = np.log(np.sum(np.exp(s[i, others])))
        pos = [j for j in others if y[j] == y[i]]
        total += -np.mean([s[i, j] - log_denom for j in pos])
    return total / n


def _random_z(seed, n, d, dtype=np.float32):
    z = np.random.default_rng(seed).normal(size=(n, d))
    return (z / np.linalg.norm(z, axis=1, keepdims=True)).astype(dtype)


# --------------------------------------------------------------------------- MI loss
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize('b, d, seed', [(1, 8, 0), (4, 16, 1), (7, 32, 2), (16, 128, 3)])
def test_matches_numpy_transcription(variant, b, d, seed):
    z = _random_z(seed, 2 * b, d)
    labels = np.random.default_rng(seed + 100).integers(0, 3, size=b).astype(np.int32)
    got = variant(objectives.supervised_nt_xent)(z, labels)
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(got, np_mi_loss(z, labels), rtol=1e-5)


@pytest.mark.parametrize('tau', [0.5, 1.0])
def test_other_temperatures(tau):
    z = _random_z(5, 12, 16)
    labels = np.array([0, 1, 0, 2, 2, 1], np.int32)
    np.testing.assert_allclose(
        objectives.supervised_nt_xent(z, labels, temperature=tau),
        np_mi_loss(z, labels, tau=tau),
        rtol=1e-5,
    )


def test_hand_computed_two_images():
    # B = 2 images of different classes (labels [0, 1]), D = 2. Views (rows):
    # a1 = [1, 0], b1 = [0, 1], a2 = [1, 0], b2 = [0, 1].  S = z z^T has rows
    # [1,0,1,0], [0,1,0,1], [1,0,1,0], [0,1,0,1]; every row max is 1, so S - max has 0 on
    # the same-image entries and -1 on the others.
    # tau = 1: E row 0 = [0 (diag removed), e^-1, e^0, e^-1] = [0, a, 1, a], a = e^-1 =
    #   0.36787944; rowsum = 1 + 2a = 1.73575888 (the same for every row by symmetry).
    #   P(pos) = 1 / 1.73575888 = 0.57611688 -> l_pos = -log(0.57611688 + 1e-8) = 0.55144470
    #   P(self) = 0 -> l_self = -log(1e-8) = 18.42068074.
    #   Pair term: (1/2B) * 4 * l_pos = l_pos = 0.55144470.
    #   Mask: each row has m = 1 on itself and its other view, so w = 1 / (2 + 1e-8) there;
    #   supervised term = (1/B) * 4 rows * w * (l_self + l_pos) = 2 * (18.42068074 +
    #   0.55144470) / (2 + 1e-8) = 18.97212517.
    #   L = 0.55144470 + 18.97212517 = 19.52357004.
    # tau = 0.07: a = e^(-1/0.07) = 6.2487495e-7; P(pos) = 1 / (1 + 2a) = 0.99999875;
    #   l_pos = -log(0.99999875 + 1e-8) = 1.2397e-6; L = l_pos + (l_self + l_pos) =
    #   18.42068313 (the self pair contributes -log(eps): the code's formula keeps it).
    z = np.array([[1, 0], [0, 1], [1, 0], [0, 1]], np.float32)
    labels = np.array([0, 1], np.int32)
    np.testing.assert_allclose(
        objectives.supervised_nt_xent(z, labels, temperature=1.0), 19.52357004, rtol=1e-6
    )
    np.testing.assert_allclose(
        objectives.supervised_nt_xent(z, labels, temperature=0.07), 18.42068313, rtol=1e-6
    )


@pytest.mark.parametrize('dtype', [jnp.float32, jnp.bfloat16])
def test_degenerate_batches_are_finite(dtype):
    # Identical rows and a single class: the row max equals every entry.
    z = jnp.ones((8, 4), dtype) / 2.0
    labels = jnp.zeros((4,), jnp.int32)
    loss, grad = jax.value_and_grad(objectives.supervised_nt_xent)(z, labels)
    assert loss.dtype == jnp.float32
    assert np.isfinite(loss)
    assert np.all(np.isfinite(np.asarray(grad, np.float32)))
    np.testing.assert_allclose(loss, np_mi_loss(np.asarray(z, np.float32), labels), rtol=1e-5)


def test_bfloat16_input_equals_float32_of_same_values():
    z = jnp.asarray(_random_z(3, 16, 32)).astype(jnp.bfloat16)
    labels = np.arange(8, dtype=np.int32) % 3
    got = objectives.supervised_nt_xent(z, labels)
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(got, np_mi_loss(np.asarray(z, np.float32), labels), rtol=1e-5)


def test_gradient_matches_finite_differences():
    z = jnp.asarray(_random_z(4, 6, 3))
    labels = jnp.array([0, 1, 0], jnp.int32)
    grad = jax.grad(lambda z: objectives.supervised_nt_xent(z, labels, temperature=0.5))(z)
    h = 1e-6
    zn = np.asarray(z, np.float64)
    for i, j in [(0, 0), (2, 1), (5, 2)]:
        plus, minus = zn.copy(), zn.copy()
        plus[i, j] += h
        minus[i, j] -= h
        fd = (np_mi_loss(plus, labels, tau=0.5) - np_mi_loss(minus, labels, tau=0.5)) / (2 * h)
        np.testing.assert_allclose(grad[i, j], fd, rtol=2e-3, atol=1e-4)


@pytest.mark.parametrize('zshape, yshape', [((7, 4), (3,)), ((8, 4), (8,)), ((8,), (4,))])
def test_bad_shapes_raise(zshape, yshape):
    with pytest.raises(ValueError, match="z must be|labels must be"):
        objectives.supervised_nt_xent(jnp.zeros(zshape), jnp.zeros(yshape, jnp.int32))


# --------------------------------------------------------------------------- ablation losses
@pytest.mark.parametrize("variant", VARIANTS)
def test_supcon_matches_numpy(variant):
    z = _random_z(7, 10, 8)
    labels = np.array([0, 1, 1, 2, 0], np.int32)
    got = variant(objectives.supcon)(z, labels)
    np.testing.assert_allclose(got, np_supcon(z, labels), rtol=1e-5)


def test_supcon_single_class_identical_rows_finite():
    z = jnp.ones((6, 3), jnp.bfloat16) / jnp.sqrt(3.0).astype(jnp.bfloat16)
    loss, grad = jax.value_and_grad(objectives.supcon)(z, jnp.zeros(3, jnp.int32))
    # All logits equal: every p_ij = 1 / 5, so the loss is log 5.
    np.testing.assert_allclose(loss, math.log(5.0), rtol=1e-2)
    assert np.all(np.isfinite(np.asarray(grad, np.float32)))


def test_cross_entropy():
    logits = np.random.default_rng(0).normal(size=(6, 4)).astype(np.float32)
    labels = np.array([1, 3, 0], np.int32)
    y = np.concatenate([labels, labels])
    lse = np.log(np.exp(logits.astype(np.float64)).sum(1))
    expected = np.mean(lse - logits[np.arange(6), y])
    np.testing.assert_allclose(objectives.cross_entropy(logits, labels), expected, rtol=1e-5)
    np.testing.assert_allclose(
        objectives.cross_entropy(logits[:3], labels),
        np.mean(lse[:3] - logits[np.arange(3), labels]),
        rtol=1e-5,
    )
    with pytest.raises(ValueError, match="logits must be"):
        objectives.cross_entropy(logits[:5], labels)


def test_registry():
    assert objectives.get_objective("mi") is objectives.supervised_nt_xent
    assert objectives.get_objective("supcon") is objectives.supcon
    assert objectives.get_objective("ce") is objectives.cross_entropy
    with pytest.raises(ValueError, match="choose one of"):
        objectives.get_objective("infonce")


if __name__ == "__main__":
    pytest.main([__file__])
