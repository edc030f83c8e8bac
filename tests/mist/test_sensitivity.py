"""Sensitivity scores against analytic gradients of a tiny linear model and finite differences."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mist_jax.mist import sensitivity


def linear_loss(params, batch):
    """0.5 * sum_n ||W x_n + b - y_n||^2 over the batch rows."""
    x, y = batch
    r = x @ params["w"] + params["b"] - y
    return 0.5 * jnp.sum(r**2)


def make_batches(seed=0, n_batches=3, n=5, d_in=4, d_out=3):
    rng = np.random.default_rng(seed)
    return [
        (rng.normal(size=(n, d_in)).astype(np.float32), rng.normal(size=(n, d_out)).astype(np.float32))
        for _ in range(n_batches)
    ]


def analytic_grads(params, batch):
    # dL/dW = X^T R, dL/db = sum_n R_n with R = X W + b - Y.
    x, y = (np.asarray(a, np.float64) for a in batch)
    r = x @ np.asarray(params["w"], np.float64) + np.asarray(params["b"], np.float64) - y
    return {"w": x.T @ r, "b": r.sum(0)}


@pytest.fixture
def setup():
    rng = np.random.default_rng(42)
    params = {
        "w": jnp.asarray(rng.normal(size=(4, 3)), jnp.float32),
        "b": jnp.asarray(rng.normal(size=(3,)), jnp.float32),
    }
    return params, make_batches()


def test_fisher_is_sum_of_squared_batch_gradients(setup):
    params, batches = setup
    got = sensitivity.fisher_scores(linear_loss, params, batches)
    grads = [analytic_grads(params, b) for b in batches]
    for k in ("w", "b"):
        expected = sum(g[k] ** 2 for g in grads)
        assert got[k].dtype == jnp.float32
        np.testing.assert_allclose(got[k], expected, rtol=1e-5)
    # Repeated calls (donated accumulator, cached compile) give the same result.
    again = sensitivity.fisher_scores(linear_loss, params, iter(batches))
    np.testing.assert_allclose(again["w"], got["w"], rtol=0)


def test_a_pass_resumed_from_its_running_sum_is_bitwise_the_full_pass(setup):
    params, batches = setup
    seen = []
    full = sensitivity.fisher_scores(linear_loss, params, batches,
                                     on_batch=lambda acc: seen.append(jax.device_get(acc)))
    assert len(seen) == 3
    np.testing.assert_allclose(seen[0]["w"], analytic_grads(params, batches[0])["w"] ** 2,
                               rtol=1e-5)
    resumed = sensitivity.fisher_scores(linear_loss, params, batches[2:], init=seen[1])
    for k in ("w", "b"):
        np.testing.assert_array_equal(resumed[k], full[k])
    # Everything already scored: the running sum is the result.
    done = sensitivity.fisher_scores(linear_loss, params, [], init=seen[2])
    np.testing.assert_array_equal(done["w"], full["w"])


def test_gradient_scores_is_sum_of_abs_batch_gradients(setup):
    params, batches = setup
    got = sensitivity.gradient_scores(linear_loss, params, batches)
    grads = [analytic_grads(params, b) for b in batches]
    for k in ("w", "b"):
        np.testing.assert_allclose(got[k], sum(np.abs(g[k]) for g in grads), rtol=1e-5)


def test_frozen_elements_score_zero(setup):
    params, batches = setup
    frozen = {"w": np.zeros((4, 3), bool), "b": np.array([True, False, True])}
    frozen["w"][1, 2] = True
    got = sensitivity.fisher_scores(linear_loss, params, batches, frozen=frozen)
    full = sensitivity.fisher_scores(linear_loss, params, batches)
    assert got["w"][1, 2] == 0.0 and got["b"][0] == 0.0 and got["b"][2] == 0.0
    np.testing.assert_allclose(np.asarray(got["w"])[~frozen["w"]], np.asarray(full["w"])[~frozen["w"]], rtol=1e-6)
    np.testing.assert_allclose(got["b"][1], full["b"][1], rtol=1e-6)


def test_nonlinear_loss_against_finite_differences():
    def loss(params, batch):
        return jnp.sum(jnp.tanh(batch @ params["w"]) ** 2)

    rng = np.random.default_rng(1)
    w = rng.normal(size=(3, 2)) * 0.5
    batches = [rng.normal(size=(4, 3)).astype(np.float32) for _ in range(2)]
    got = sensitivity.fisher_scores(loss, {"w": jnp.asarray(w, jnp.float32)}, batches)

    def np_loss(w, x):
        return np.sum(np.tanh(np.asarray(x, np.float64) @ w) ** 2)

    h = 1e-6
    expected = np.zeros_like(w)
    for x in batches:
        g = np.zeros_like(w)
        for idx in np.ndindex(*w.shape):
            e = np.zeros_like(w)
            e[idx] = h
            g[idx] = (np_loss(w + e, x) - np_loss(w - e, x)) / (2 * h)
        expected += g**2
    np.testing.assert_allclose(got["w"], expected, rtol=1e-4, atol=1e-6)


def test_bfloat16_params_give_float32_scores(setup):
    params, batches = setup
    p16 = jax.tree.map(lambda x: x.astype(jnp.bfloat16), params)
    loss = lambda p, b: linear_loss(p, b).astype(jnp.float32)
    got = sensitivity.fisher_scores(loss, p16, batches)
    assert got["w"].dtype == jnp.float32 and got["w"].shape == (4, 3)
    # The same scores as float32 params holding the bf16-rounded values, up to bf16 gradients.
    p32 = jax.tree.map(lambda x: x.astype(jnp.float32), p16)
    want = sensitivity.fisher_scores(lambda p, b: linear_loss(p, b), p32, batches)
    np.testing.assert_allclose(got["w"], want["w"], rtol=5e-2, atol=1e-3)
    assert np.abs(np.asarray(want["w"])).max() > 1e-2  # not a comparison of zeros


def test_magnitude_scores():
    got = sensitivity.magnitude_scores({"a": jnp.array([-2.0, 0.5], jnp.bfloat16)})
    assert got["a"].dtype == jnp.float32
    np.testing.assert_array_equal(got["a"], [2.0, 0.5])


def test_errors(setup):
    params, batches = setup
    with pytest.raises(ValueError, match="batches is empty"):
        sensitivity.fisher_scores(linear_loss, params, [])
    with pytest.raises(ValueError, match="frozen must be"):
        sensitivity.fisher_scores(linear_loss, params, batches, frozen={"w": np.zeros((4, 3), bool)})
