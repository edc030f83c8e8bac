"""Parameter sensitivity scores for MIST selection and its ablations.

Source: docs/algorithm.md §4 (MI-Fisher score); code
models/simplecil_mist.py `_mist_run` (first epoch: `response_accumulator += grad ** 2`, frozen
elements' gradients zeroed; the code's 1/len(loader)^2 scale does not change a per-tensor
quantile and is dropped here).

Scoring is one pass over the task's data with no update. The per-batch gradient, the frozen
masking and the accumulation are fused in one jitted step that takes and returns the running sum
(donated), so the pass never leaves the device; the first batch initialises the sum (no zeros
pass). Both steps are compiled once per distinct `loss_fn` object.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import jax
import jax.numpy as jnp

PyTree = Any
LossFn = Callable[[PyTree, Any], jax.Array]


def _batch_scores(loss_fn: LossFn, power: int, params: PyTree, batch: Any, frozen) -> PyTree:
    """|dL/dparams|^power for one batch in float32 (power 1 or 2), 0 where frozen."""
    grads = jax.grad(loss_fn)(params, batch)
    scores = jax.tree.map(lambda g: jnp.abs(g.astype(jnp.float32)) ** power, grads)
    if frozen is None:
        return scores
    return jax.tree.map(lambda s, f: jnp.where(f, 0.0, s), scores, frozen)


def compile_steps(loss_fn: LossFn, power: int = 2, shardings: PyTree | None = None
                  ) -> tuple[Callable, Callable]:
    """``(first, accumulate)``: jitted ``first(params, batch, frozen) -> scores`` and
    ``accumulate(acc, params, batch, frozen) -> acc + scores`` (acc donated) of
    ``|dL/dparams| ** power``. Build them once and pass them as ``steps`` to
    ``fisher_scores`` / ``gradient_scores`` to score many passes with one compile (the
    caller owns them: nothing here keeps ``loss_fn`` or its model alive).

    ``shardings``: a NamedSharding per params leaf fixes the sum's and the params' layout
    (in/out); None leaves them to the compiler.
    """

    def first(params, batch, frozen):
        return _batch_scores(loss_fn, power, params, batch, frozen)

    def accumulate(acc, params, batch, frozen):
        return jax.tree.map(jnp.add, acc, _batch_scores(loss_fn, power, params, batch, frozen))

    if shardings is None:
        return jax.jit(first), jax.jit(accumulate, donate_argnums=(0,))
    sh = shardings
    return (
        jax.jit(first, in_shardings=(sh, None, None), out_shardings=sh),
        jax.jit(accumulate, in_shardings=(sh, sh, None, None), out_shardings=sh,
                donate_argnums=(0,)),
    )


def add_batch(steps: tuple[Callable, Callable], acc: PyTree | None, params: PyTree, batch: Any,
              frozen) -> PyTree:
    """The running sum after one more batch: ``first`` of ``compile_steps``' pair when ``acc``
    is None, else ``accumulate`` (``acc`` donated). One scoring step, for ``fisher_scores``
    and for the runner's resumable pass (``mist.tuner.score``)."""
    first, accumulate = steps
    return first(params, batch, frozen) if acc is None else accumulate(acc, params, batch, frozen)


def nonempty(acc: PyTree | None) -> PyTree:
    """``acc``; raises ValueError when no batch was scored (it is still None)."""
    if acc is None:
        raise ValueError("batches is empty: pass an iterable with at least one batch of the task.")
    return acc


def _accumulate(loss_fn: LossFn, power: int, params: PyTree, batches: Iterable, frozen=None,
                shardings: PyTree | None = None, init: PyTree | None = None,
                on_batch: Callable[[PyTree], None] | None = None,
                steps: tuple[Callable, Callable] | None = None) -> PyTree:
    if frozen is not None and jax.tree.structure(frozen) != jax.tree.structure(params):
        raise ValueError(
            "frozen must be None or a bool pytree with the same structure as params "
            "(e.g. MistState.frozen from mist_jax.mist.masks.init_mist_state(params))."
        )
    steps = steps or compile_steps(loss_fn, power, shardings)
    acc = init
    for batch in batches:
        acc = add_batch(steps, acc, params, batch, frozen)
        if on_batch is not None:
            on_batch(acc)
    return nonempty(acc)


def fisher_scores(
    loss_fn: LossFn, params: PyTree, batches: Iterable, frozen: PyTree | None = None,
    shardings: PyTree | None = None, init: PyTree | None = None,
    on_batch: Callable[[PyTree], None] | None = None,
    steps: tuple[Callable, Callable] | None = None,
) -> PyTree:
    """MI-Fisher sensitivity: sum over batches of the squared batch gradient (docs/algorithm.md §4).

    Args:
      loss_fn: pure function (params, batch) -> float scalar loss (e.g. the MI objective over two
        views).
      params: parameter pytree (any float dtype).
      batches: iterable of batches (pytrees of arrays); each is passed to `loss_fn` unchanged.
      frozen: None or bool pytree shaped like params; frozen elements score exactly 0.
      shardings: None, or a NamedSharding per leaf of params (``MeshContext.shardings``):
        params must already be laid out so, and the scores come back laid out so.
      init: None, or the sum over batches already scored (resuming a pass: the result is then
        bitwise that of one uninterrupted pass); laid out like params.
      on_batch: called with the running sum after each batch (e.g. to checkpoint it); the sum
        is donated to the next step, so read or save it inside the call.
      steps: ``compile_steps(loss_fn, 2, shardings)`` built once by the caller (a run's
        ``Tuner``); None compiles them for this call.

    Returns:
      float32 pytree shaped like params: sum_b (dL_b/dtheta)^2.

    Raises:
      ValueError: `batches` is empty (and no `init`) or `frozen` does not match params.
    """
    return _accumulate(loss_fn, 2, params, batches, frozen=frozen, shardings=shardings,
                       init=init, on_batch=on_batch, steps=steps)


def gradient_scores(loss_fn: LossFn, params: PyTree, batches: Iterable, **options) -> PyTree:
    """Gradient-magnitude ablation score: sum over batches of |batch gradient| (docs/algorithm.md §12).

    This is the sum of per-batch absolute gradients (not the absolute value of the summed
    gradient), the first-order analogue of `fisher_scores`, so opposite-signed batches do not
    cancel. Same arguments (``options``: ``frozen``, ``shardings``, ``init``, ``on_batch``,
    ``steps``), returns and errors as `fisher_scores`.
    """
    return _accumulate(loss_fn, 1, params, batches, **options)


def magnitude_scores(params: PyTree) -> PyTree:
    """Weight-magnitude ablation score |w| (docs/algorithm.md §12): float32 pytree shaped like params."""
    return jax.tree.map(lambda w: jnp.abs(w).astype(jnp.float32), params)
