"""Scoring compiles per caller, not in a module cache: the loss function (and the model in its
closure) is freed once its caller drops it, and steps compiled once score many passes."""

import gc
import weakref

import jax.numpy as jnp
import numpy as np

from mist_jax.mist import sensitivity


def _loss_fn():
    w0 = jnp.ones(3)

    def loss(params, batch):
        return jnp.sum((params["w"] * batch - w0) ** 2)

    return loss


def test_fisher_scores_keep_nothing_alive():
    loss = _loss_fn()
    params = {"w": jnp.asarray([1.0, 2.0, 3.0])}
    batches = [jnp.asarray([1.0, 1.0, 1.0]), jnp.asarray([2.0, 0.0, 1.0])]
    scores = sensitivity.fisher_scores(loss, params, batches)
    # d/dw sum((w x - 1)^2) = 2 x (w x - 1), squared and summed over the two batches.
    w = np.array([1.0, 2.0, 3.0])
    want = sum((2 * x * (w * x - 1)) ** 2 for x in (np.ones(3), np.array([2.0, 0.0, 1.0])))
    np.testing.assert_allclose(np.asarray(scores["w"]), want, rtol=1e-6)
    gone = weakref.ref(loss)
    del loss
    gc.collect()
    assert gone() is None


def test_steps_compiled_once_give_the_same_scores():
    loss = _loss_fn()
    params = {"w": jnp.asarray([1.0, -2.0, 0.5])}
    batches = [jnp.asarray([1.0, 3.0, 1.0])]
    steps = sensitivity.compile_steps(loss, 2)
    once = sensitivity.fisher_scores(loss, params, batches)
    again = sensitivity.fisher_scores(loss, params, batches, steps=steps)
    np.testing.assert_array_equal(np.asarray(once["w"]), np.asarray(again["w"]))
