"""The three L2-normalisation conventions against their references' formulas, by hand."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mist_jax.models.normalize import l2_normalize

X = np.array([[3.0, 4.0], [0.0, 0.0], [1e-7, 0.0]], np.float32)


def test_mist_divides_by_the_norm_plus_1e_8_in_float32():
    y = l2_normalize(jnp.asarray(X, jnp.bfloat16), convention="mist")
    assert y.dtype == jnp.float32
    # 3-4-5 row; zero row stays 0; 1e-7 / (1e-7 + 1e-8) = 1 / 1.1.
    np.testing.assert_allclose(np.asarray(y), [[0.6, 0.8], [0, 0], [1 / 1.1, 0]], rtol=1e-2)
    grad = jax.grad(lambda x: l2_normalize(x, convention="mist").sum())(jnp.zeros((2, 3)))
    assert np.isfinite(np.asarray(grad)).all()


def test_tf_clips_the_squared_norm_at_1e_12():
    y = np.asarray(l2_normalize(jnp.asarray(X), convention="tf"))
    # ||(1e-7, 0)||^2 = 1e-14 < 1e-12: divided by sqrt(1e-12) = 1e-6, so 0.1.
    np.testing.assert_allclose(y, [[0.6, 0.8], [0, 0], [0.1, 0]], rtol=1e-5)


def test_torch_clips_the_norm_at_1e_12():
    y = np.asarray(l2_normalize(jnp.asarray(X), convention="torch"))
    # ||(1e-7, 0)|| = 1e-7 > 1e-12: a unit row.
    np.testing.assert_allclose(y, [[0.6, 0.8], [0, 0], [1.0, 0]], rtol=1e-5)


def test_unknown_convention_is_named():
    with pytest.raises(ValueError, match="'numpy'"):
        l2_normalize(jnp.ones(3), convention="numpy")
