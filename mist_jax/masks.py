"""Parameter selection for MIST: per-tensor top-quantile masks, coverage, task bookkeeping.

Source: MIST Sec. 2.3 and 2.5 of /work/shared/MIST_SPEC.md; code models/simplecil_mist.py
(`_mist_run`: `torch.quantile(scores, 1 - select_rate)` per tensor, always-selected names,
`overlap_mask += mask`, `frozen_masks |= ...` after the task).

Paths are the "/"-joined dict keys of a pytree, e.g. "backbone/encoderblock_0/attn/query/kernel".
All array functions here are jit-able when `select_rate`, `freeze_rate`, `exempt` and `kind` are
static (they only shape the trace).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mist_jax import sensitivity

PyTree = Any

#: Regexes (re.search on the path) of tensors that are always fully selected and never counted
#: or frozen: every bias, every LayerNorm scale, the projection head, the classifier.
DEFAULT_EXEMPT: tuple[str, ...] = (
    r"(^|/)bias$",
    r"norm[^/]*/scale$",
    r"(^|/)head/",
    r"(^|/)classifier/",
)

SELECTORS: tuple[str, ...] = ("fisher", "gradient", "magnitude", "random")


class MistState(NamedTuple):
    """What MIST carries from task to task (MIST Sec. 2.5; code `overlap_mask`, `frozen_masks`).

    Attributes:
      count: int32 pytree shaped like params: how many earlier tasks selected each element.
      frozen: bool pytree shaped like params: elements that are never updated again.
    """

    count: PyTree
    frozen: PyTree


def path_str(key_path) -> str:
    """Returns the "/"-joined path string of a `jax.tree_util` key path, e.g. "head/kernel"."""
    return jax.tree_util.keystr(tuple(key_path), simple=True, separator="/")


def tree_paths(tree: PyTree) -> PyTree:
    """Returns a pytree shaped like `tree` whose leaves are their "/"-joined path strings."""
    return jax.tree_util.tree_map_with_path(lambda p, _: path_str(p), tree)


def _compile(patterns: Sequence[str] | None) -> list[re.Pattern]:
    if patterns is None:
        return []
    if isinstance(patterns, str):
        raise ValueError(
            f"exempt/patterns must be a sequence of regexes, got the string {patterns!r}; "
            "wrap it in a tuple: (pattern,)."
        )
    return [re.compile(p) for p in patterns]


def exempt_tree(params: PyTree, patterns: Sequence[str] | None = DEFAULT_EXEMPT) -> PyTree:
    """Marks the leaves whose path matches any regex in `patterns` (re.search).

    Args:
      params: any pytree (arrays or shapes); only its structure and paths are used.
      patterns: regexes; None or () matches nothing.

    Returns:
      A pytree shaped like `params` with Python bool leaves (static, usable in jit tracing).
    """
    compiled = _compile(patterns)
    return jax.tree_util.tree_map_with_path(
        lambda p, _: any(c.search(path_str(p)) for c in compiled), params
    )


def expand_prefix(prefix: PyTree | None, params: PyTree, default) -> PyTree:
    """Matches a prefix tree to the leaves of `params`; None (anywhere) stands for `default`.

    Values are checked to broadcast to each leaf's shape but are not materialised at full size
    (a scalar stays a scalar), so uncovered leaves cost no memory.

    Args:
      prefix: None, an array/scalar, or a pytree that is a prefix of `params`' structure whose
        leaves are arrays (shared by the matching subtree of `params`) or None.
      params: the full pytree whose leaves are arrays (their shapes are used).
      default: scalar used for leaves covered by None.

    Returns:
      A pytree shaped like `params` whose leaves are jnp arrays broadcastable to the leaves.

    Raises:
      ValueError: `prefix` is not a prefix of `params` or a value does not broadcast.
    """

    def fill(outer, value, subtree):
        def one(inner, leaf):
            path = tuple(outer) + tuple(inner)
            v = jnp.asarray(default if value is None else value)
            try:
                ok = jnp.broadcast_shapes(v.shape, jnp.shape(leaf)) == jnp.shape(leaf)
            except ValueError:
                ok = False
            if not ok:
                raise ValueError(
                    f"value of shape {v.shape} does not broadcast to the parameter at "
                    f"{path_str(path)!r} of shape {jnp.shape(leaf)}; pass a tree matching params."
                )
            return v

        return jax.tree_util.tree_map_with_path(one, subtree)

    try:
        return jax.tree_util.tree_map_with_path(fill, prefix, params, is_leaf=lambda x: x is None)
    except ValueError as e:
        if "broadcast" in str(e):
            raise
        raise ValueError(
            "mask/count/frozen tree is not a prefix of the params tree "
            f"({jax.tree.structure(prefix, is_leaf=lambda x: x is None)} vs "
            f"{jax.tree.structure(params)}); use None for uncovered subtrees."
        ) from e


def quantile_threshold(x: jax.Array, q: float) -> jax.Array:
    """Linear-interpolation quantile of all elements of `x`, exactly as numpy/torch define it.

    The index arithmetic is done in float64 on the host (q and the size are static) with numpy's
    formula (n - 1) * q; the interpolation uses numpy's two-sided lerp in float32, so ties give
    exactly the tied value (jnp.quantile's `a*(1-g) + b*g` can round above it and drop tied
    elements).

    Args:
      x: array of any shape (float); reduced over all elements in float32.
      q: static Python float in [0, 1].

    Returns:
      float32 scalar t with `x >= t` selecting the top (1 - q) fraction.
    """
    n = int(np.prod(jnp.shape(x)))
    if n == 0:
        raise ValueError("quantile of an empty tensor is undefined; drop the empty parameter.")
    virtual = (n - 1) * q  # numpy's 'linear' virtual index (Hyndman & Fan method 7)
    lo = min(max(int(math.floor(virtual)), 0), n - 1)
    hi = min(lo + 1, n - 1)
    g = virtual - math.floor(virtual) if 0 <= virtual < n - 1 else 0.0
    s = jnp.sort(jnp.ravel(x).astype(jnp.float32))
    a, b = s[lo], s[hi]
    if g >= 0.5:
        return b - (b - a) * np.float32(1.0 - g)
    return a + (b - a) * np.float32(g)


def _check_rate(name: str, rate: float) -> None:
    if not 0.0 < float(rate) <= 1.0:
        raise ValueError(f"{name} must be in (0, 1], got {rate}; e.g. 0.1 for 10%.")


def select_top(
    scores: PyTree, select_rate: float, exempt: Sequence[str] | None = DEFAULT_EXEMPT
) -> PyTree:
    """Per-tensor top-quantile mask: `score >= quantile(score, 1 - select_rate)` (MIST Sec. 2.3).

    Args:
      scores: float pytree (any shapes); higher = more important.
      select_rate: static float in (0, 1]; fraction of each tensor to select (ties at the
        threshold are all selected, so slightly more may be).
      exempt: path regexes of tensors that are fully selected whatever their score.

    Returns:
      bool pytree shaped like `scores`.

    Raises:
      ValueError: select_rate outside (0, 1].
    """
    _check_rate("select_rate", select_rate)
    q = 1.0 - float(select_rate)

    def one(s, is_exempt):
        if is_exempt:
            return jnp.ones(jnp.shape(s), bool)
        return s.astype(jnp.float32) >= quantile_threshold(s, q)

    return jax.tree.map(one, scores, exempt_tree(scores, exempt))


def random_scores(params: PyTree, seed: int = 0) -> PyTree:
    """Uniform [0, 1) float32 scores shaped like `params`, one fold_in(seed key, leaf index) each.

    Used by the "random" selector: `select_top(random_scores(...), rate)` picks a random subset
    of the same per-tensor size as the other selectors.
    """
    leaves, treedef = jax.tree.flatten(params)
    key = jax.random.key(seed)
    out = [
        jax.random.uniform(jax.random.fold_in(key, i), jnp.shape(x), jnp.float32)
        for i, x in enumerate(leaves)
    ]
    return jax.tree.unflatten(treedef, out)


def select(
    kind: str,
    select_rate: float,
    *,
    params: PyTree | None = None,
    scores: PyTree | None = None,
    seed: int = 0,
    exempt: Sequence[str] | None = DEFAULT_EXEMPT,
) -> PyTree:
    """Selection with the same per-tensor budget for every ablation selector (MIST Sec. 3).

    Args:
      kind: "fisher" or "gradient" (pass the matching `scores` from mist_jax.sensitivity),
        "magnitude" (|w| of `params`), or "random" (uniform scores from `seed`; shapes from
        `params` or `scores`). The random mask is drawn once per call (per task), not per step.
      select_rate: static float in (0, 1].
      params: parameter pytree (needed for "magnitude"; shapes for "random").
      scores: score pytree (needed for "fisher" and "gradient").
      seed: PRNG seed for "random".
      exempt: path regexes of always-selected tensors.

    Returns:
      bool pytree shaped like params/scores.

    Raises:
      ValueError: unknown kind or a missing input.
    """
    if kind not in SELECTORS:
        raise ValueError(f"unknown selector {kind!r}; choose one of {SELECTORS}.")
    if kind in ("fisher", "gradient"):
        if scores is None:
            raise ValueError(
                f"selector {kind!r} needs scores=mist_jax.sensitivity.{kind}_scores(...)."
            )
        chosen = scores
    elif kind == "magnitude":
        if params is None:
            raise ValueError("selector 'magnitude' needs params=.")
        chosen = sensitivity.magnitude_scores(params)
    else:
        shapes = params if params is not None else scores
        if shapes is None:
            raise ValueError("selector 'random' needs params= (or scores=) for the shapes.")
        chosen = random_scores(shapes, seed)
    return select_top(chosen, select_rate, exempt)


def coverage(mask: PyTree) -> dict[str, tuple[int, int]]:
    """Per-tensor selection counts (code `print_mask_coverage`).

    Args:
      mask: bool (or 0/1) pytree.

    Returns:
      dict path -> (selected, total) as Python ints, in tree order. Host sync.
    """
    flat, _ = jax.tree_util.tree_flatten_with_path(mask)
    return {path_str(p): (int(jnp.sum(m)), int(np.prod(jnp.shape(m)))) for p, m in flat}


def overall_fraction(
    report: dict[str, tuple[int, int]], exclude: Sequence[str] | None = None
) -> float:
    """Selected / total over all tensors of a `coverage` report, skipping paths matching `exclude`.

    E.g. `overall_fraction(coverage(mask), DEFAULT_EXEMPT)` is the budget actually spent on
    scored weights (about select_rate). Returns 0.0 if nothing is left.
    """
    compiled = _compile(exclude)
    kept = [v for k, v in report.items() if not any(c.search(k) for c in compiled)]
    total = sum(t for _, t in kept)
    return sum(s for s, _ in kept) / total if total else 0.0


def format_coverage(
    report: dict[str, tuple[int, int]], exclude: Sequence[str] | None = None
) -> str:
    """Human-readable table of a `coverage` report and the overall fraction over non-`exclude`."""
    width = max((len(k) for k in report), default=4)
    lines = [f"{'tensor':<{width}}  {'selected':>12}  {'total':>12}  {'%':>7}"]
    for k, (s, t) in report.items():
        lines.append(f"{k:<{width}}  {s:>12d}  {t:>12d}  {100.0 * s / max(t, 1):>6.2f}%")
    lines.append(f"overall: {100.0 * overall_fraction(report, exclude):.3f}%")
    return "\n".join(lines)


def init_mist_state(params: PyTree) -> MistState:
    """Fresh task bookkeeping: count int32 zeros and frozen all False, shaped like `params`."""
    return MistState(
        count=jax.tree.map(lambda x: jnp.zeros(jnp.shape(x), jnp.int32), params),
        frozen=jax.tree.map(lambda x: jnp.zeros(jnp.shape(x), bool), params),
    )


def update_after_task(
    state: MistState,
    mask: PyTree,
    scores: PyTree,
    freeze_rate: float = 0.0005,
    exempt: Sequence[str] | None = DEFAULT_EXEMPT,
) -> MistState:
    """Bookkeeping after a task (MIST Sec. 2.5): count += mask; frozen |= top freeze_rate.

    For non-exempt leaves only: `count + mask` and
    `frozen | (score >= quantile(score, 1 - freeze_rate))` per tensor. Exempt leaves are
    returned unchanged (count 0, frozen False if they started so).

    Args:
      state: MistState from `init_mist_state` or a previous call.
      mask: bool pytree of this task's selection.
      scores: float pytree of this task's sensitivity scores.
      freeze_rate: static float in (0, 1].
      exempt: path regexes of always-selected tensors.

    Returns:
      The new MistState.

    Raises:
      ValueError: freeze_rate outside (0, 1].
    """
    _check_rate("freeze_rate", freeze_rate)
    q = 1.0 - float(freeze_rate)
    ex = exempt_tree(state.count, exempt)

    def count_fn(c, m, e):
        return c if e else c + m.astype(jnp.int32)

    def frozen_fn(f, s, e):
        return f if e else f | (s.astype(jnp.float32) >= quantile_threshold(s, q))

    return MistState(
        count=jax.tree.map(count_fn, state.count, mask, ex),
        frozen=jax.tree.map(frozen_fn, state.frozen, scores, ex),
    )
