"""MIST's sparse-tuning optimizer as optax transforms.

Source: docs/algorithm.md §6-7; code models/simplecil_mist.py
(`masked_update`: grad *= mask * Bernoulli(1 - drop_rate), grad *= 0.9 ** count, frozen grads
zeroed; then `optim.SGD(momentum=0.9, weight_decay=5e-4)` with lr 1e-4 for the backbone and 1e-2
for the projection head).

Design:
- `sparse_tuning` keeps the step count, a PRNG key and one uint8 code per element in its state
  (arrays built once in `init`, a scalar where uncovered), so masks are never baked into the
  compiled step as constants: code = 0 where not selected or frozen, else 1 + count (count
  clipped to 254, where 0.9 ** 254 = 2e-12). The factor overlap_decay ** (code - 1) is
  looked up in the fused update; 1 byte per element instead of a float32 factor keeps the
  extra memory traffic small.
- Cheap, fused Bernoulli draws (`drop.hashed_keep`, a keyed counter-based hash of each
  element's index), fused into the update; the bits are the same on any device count.
- One transform for a whole run: `start_task` resets the sparse state inside any optimizer
  state for a new task's mask, counts, frozen flags and key, so the step compiles once.
- The inner optimizer is the authors' SGD (`inner_optimizer("sgd")`) or any optax optimizer
  by name (`inner_optimizer("adamw")`), always after the sparse transform.
- `sparsity="strict"` wraps the inner optimizer so the live mask of the drop is reused to mask the
  final update: nothing is stored.
- Injected drops. `update(grads, state, params, keep=tree)` (an optax extra argument) replaces
  the step's draw with a given bool pytree shaped like params, e.g. the Bernoulli masks a
  PyTorch run drew (the golden parity tests in tests/parity/).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mist_jax.infra import trees
from mist_jax.mist import drop
from mist_jax.mist.masks import check_rate
from mist_jax.mist import inner as inner_lib
from mist_jax.infra import seeds

PyTree = Any
SPARSITY_MODES = ("reference", "strict")
_MAX_COUNT = 254  # counts are stored as uint8 codes 1 + count


class SparseTuningState(NamedTuple):
    """State of `sparse_tuning`.

    Attributes:
      step: int32 scalar, number of updates done.
      key: uint32[2] raw PRNG key from the seed.
      code: uint8 pytree shaped like params (leaves broadcastable to the parameter; a scalar 1
        where uncovered): 0 where not selected or frozen, else 1 + min(count, 254).
    """

    step: jax.Array
    key: jax.Array
    code: PyTree


class StrictState(NamedTuple):
    """State of the strict chain: the sparse-tuning state and the wrapped optimizer's state."""

    sparse: SparseTuningState
    inner: optax.OptState


class _Sparse(NamedTuple):
    """The rates and the pure pieces shared by the reference and strict chains."""

    drop_rate: float
    overlap_decay: float

    @staticmethod
    def init(params: PyTree, mask: PyTree | None = None, count: PyTree | None = None,
             frozen: PyTree | None = None, seed: Any = 0) -> SparseTuningState:
        """A task's state: codes from ``mask``, ``count``, ``frozen`` (pytrees shaped like
        params, prefixes with None, or None: all selected, count 0, nothing frozen)."""
        mask = trees.expand_prefix(mask, params, True)
        count = trees.expand_prefix(count, params, 0)
        frozen = trees.expand_prefix(frozen, params, False)

        def code(m, c, f):
            candidate = m.astype(bool) & ~f.astype(bool)
            return jnp.where(candidate, jnp.clip(c, 0, _MAX_COUNT) + 1, 0).astype(jnp.uint8)

        return SparseTuningState(
            step=jnp.zeros([], jnp.int32),
            key=seeds.raw_key(seed),
            code=jax.tree.map(code, mask, count, frozen),
        )

    def factor(self, code: jax.Array) -> jax.Array:
        """overlap_decay ** (code - 1) (0 for code 0), float32, from a 256-entry table: exactly
        rounded, and a gather fused into the update is cheaper on CPU than exp or pow."""
        table = np.concatenate([[0.0], self.overlap_decay ** np.arange(_MAX_COUNT + 1.0)])
        return jnp.asarray(table, jnp.float32)[code]

    def step(self, state: SparseTuningState, updates: PyTree,
             keep: PyTree | None = None) -> tuple[PyTree, PyTree]:
        """(masked gradients, live mask): live = selected, not frozen, kept by this step's draw
        (or by `keep`, a bool pytree shaped like `updates`, when given)."""
        leaves, treedef = jax.tree.flatten(updates)
        codes = treedef.flatten_up_to(state.code)
        kept = [None] * len(leaves) if keep is None else treedef.flatten_up_to(keep)
        words = drop.leaf_words(jax.random.fold_in(state.key, state.step), len(leaves))
        grads, live = [], []
        for i, (g, c, k) in enumerate(zip(leaves, codes, kept)):
            if k is None:  # the words of fold_in(fold_in(key, step), i)
                k = drop.hashed_keep(words[i], g.shape, 1.0 - self.drop_rate)
            keep = jnp.asarray(k, bool) & (c != 0)
            scaled = g.astype(jnp.float32) * self.factor(c)
            grads.append(jnp.where(keep, scaled, 0.0).astype(g.dtype))
            live.append(keep)
        return jax.tree.unflatten(treedef, grads), jax.tree.unflatten(treedef, live)


def start_task(opt_state: optax.OptState, params: PyTree, mask: PyTree | None,
               count: PyTree | None, frozen: PyTree | None, key) -> optax.OptState:
    """``opt_state`` with every `SparseTuningState` in it set for a new task (step 0).

    The transforms take no per-task data: build the optimizer once, ``init`` it (or
    ``jax.eval_shape`` it for the shardings), then call this per task with the task's selection,
    so one compiled step serves every task; the inner optimizer's state (e.g. SGD momentum) is
    left as given. Pure and jit-able.

    Args:
      opt_state: a state of `sparse_tuning` / `mist_optimizer` (any chain containing them).
      params: the params pytree the optimizer updates.
      mask: bool pytree matching params, or a prefix of it with None (= all selected) for
        uncovered subtrees, or None (all selected).
      count: int pytree / prefix / None (= 0): earlier tasks that selected each element.
      frozen: bool pytree / prefix / None (= False).
      key: int seed or PRNG key of the task's drops: leaf i at step t uses
        fold_in(fold_in(key, t), i), i the leaf's index in the tree the transform sees.

    Raises:
      ValueError: trees that do not match params.
    """
    fresh = _Sparse.init(params, mask, count, frozen, key)
    return jax.tree.map(lambda x: fresh if isinstance(x, SparseTuningState) else x, opt_state,
                        is_leaf=lambda x: isinstance(x, SparseTuningState))


def _make_sparse(drop_rate, overlap_decay) -> _Sparse:
    check_rate("drop_rate", drop_rate, low_inclusive=True, usual="0.9 (MIST)")
    check_rate("overlap_decay", overlap_decay, low_inclusive=True, usual="0.9 (MIST)")
    return _Sparse(float(drop_rate), float(overlap_decay))


def sparse_tuning(drop_rate: float = 0.9, overlap_decay: float = 0.9
                  ) -> optax.GradientTransformation:
    """MIST's gradient transform, chained before SGD (docs/algorithm.md §6; code `masked_update`).

    g <- g * mask * Bernoulli(1 - drop_rate) * overlap_decay ** count, and exactly 0 where frozen.
    The Bernoulli draw is fresh per step and per element (also for always-selected tensors).
    ``init`` selects every element (count 0, nothing frozen, key 0); ``start_task`` sets a
    task's mask, counts, frozen flags and key.

    Args:
      drop_rate: probability that a selected gradient element is dropped in a step.
      overlap_decay: per-earlier-selection gradient factor.

    Returns:
      optax.GradientTransformationExtraArgs with `SparseTuningState`; `update(grads, state,
      params=None, keep=None)` is jit-able; `keep` (bool pytree shaped like params) replaces
      the step's Bernoulli draw.

    Raises:
      ValueError: rates outside [0, 1].
    """
    return _reference(_make_sparse(drop_rate, overlap_decay))


def _reference(cfg: _Sparse) -> optax.GradientTransformation:
    """The sparse-tuning gradient transform for a validated configuration."""

    def update_fn(updates, state, params=None, *, keep=None, **extra_args):
        del params, extra_args
        new, _ = cfg.step(state, updates, keep)
        return new, state._replace(step=state.step + 1)

    return optax.GradientTransformationExtraArgs(cfg.init, update_fn)


def _strict(cfg: _Sparse, inner: optax.GradientTransformation) -> optax.GradientTransformation:
    """sparse_tuning -> inner, with the inner update multiplied by the same step's live mask."""

    def init_fn(params):
        return StrictState(sparse=cfg.init(params), inner=inner.init(params))

    def update_fn(updates, state, params=None, *, keep=None, **extra_args):
        del extra_args
        grads, live = cfg.step(state.sparse, updates, keep)
        new, inner_state = inner.update(grads, state.inner, params)
        new = jax.tree.map(lambda u, l: jnp.where(l, u, jnp.zeros_like(u)), new, live)
        sparse_state = state.sparse._replace(step=state.sparse.step + 1)
        return new, StrictState(sparse=sparse_state, inner=inner_state)

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)


def mist_optimizer(
    *,
    sparsity: str = "reference",
    drop_rate: float = 0.9,
    overlap_decay: float = 0.9,
    inner: optax.GradientTransformation | None = None,
) -> optax.GradientTransformation:
    """The whole MIST update: `sparse_tuning` then the `inner` optimizer (docs/algorithm.md §6-7).

    `sparsity="reference"` (code behaviour): weight decay and momentum act on every element, so
    unselected weights drift. `sparsity="strict"`: the final update is also multiplied by the
    step's live mask (selected, not frozen, kept by the drop), so only those elements change.

    Args: see `sparse_tuning` (drop_rate, overlap_decay; a task's selection: `start_task`);
      inner: default the authors' SGD (``inner.inner_optimizer``: lr 1e-4, head 1e-2, momentum
      0.9, weight decay 5e-4); any optax transformation (``inner_optimizer("adamw", ...)``).

    Returns:
      optax.GradientTransformationExtraArgs; call `update(grads, state, params)` inside the
      jitted step (`keep=` injects the drop masks, see `sparse_tuning`).

    Raises:
      ValueError: unknown sparsity or rates outside [0, 1].
    """
    if sparsity not in SPARSITY_MODES:
        raise ValueError(f"sparsity must be one of {SPARSITY_MODES}, got {sparsity!r}.")
    cfg = _make_sparse(drop_rate, overlap_decay)
    inner = inner_lib.inner_optimizer() if inner is None else inner
    if sparsity == "strict":
        return _strict(cfg, inner)
    return optax.chain(_reference(cfg), inner)


def updated_fraction(before: PyTree, after: PyTree, exempt=None) -> jax.Array:
    """Fraction of elements that changed between two parameter pytrees (the paper's sparsity claim, docs/algorithm.md §7).

    Args:
      before, after: pytrees with the same structure and shapes (e.g. params["backbone"] before
        and after one step).
      exempt: None or path regexes of leaves to leave out (e.g. masks.DEFAULT_EXEMPT, which
        also leaves out a "head/" subtree).

    Returns:
      float32 scalar in [0, 1] (0 if no element is counted).
    """
    skip = trees.exempt_tree(before, exempt)
    changed, total = jnp.zeros([], jnp.float32), 0
    for b, a, s in zip(jax.tree.leaves(before), jax.tree.leaves(after), jax.tree.leaves(skip)):
        if not s:
            changed = changed + jnp.sum(b != a, dtype=jnp.float32)
            total += b.size
    return changed / max(total, 1)
