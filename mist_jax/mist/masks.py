"""Parameter selection for MIST: per-tensor top-quantile masks, coverage, task bookkeeping.

Source: docs/algorithm.md §5 and §8, and the official code models/{simplecil,ranpac}_mist.py
(`_mist_run`: `torch.quantile(scores, 1 - select_rate)` per tensor, always-selected names,
`overlap_mask += mask`, `frozen_masks |= ...` after the task); docs/algorithm.md maps each step.

**Selection units.** The official code quantiles each PyTorch tensor of a timm ViT, where a
block's query, key and value projections are ONE fused tensor (`attn.qkv.weight`, [3D, D]): the
10% budget is shared by q, k and v, so one of them may get 25% and another 2%. mist-jax stores
them as three leaves (`.../query/kernel`, `.../key/kernel`, `.../value/kernel`); with
``units="official"`` (the default) every quantile here (selection, freezing, coverage) is taken
over the three together, whatever the checkpoint's source. ``units="leaf"`` quantiles each leaf
on its own (a deviation from the official code, documented in docs/algorithm.md).

Paths are those of mist_jax/infra/trees.py; reports on masks are in mist_jax/mist/mask_stats.py. All array functions here are jit-able when `select_rate`, `freeze_rate`, `exempt`, `units` and
`kind` are static (they only shape the trace).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from mist_jax.mist import quantiles, sensitivity
from mist_jax.infra.trees import HEAD, exempt_tree, path_str

PyTree = Any

#: Regexes (re.search on the path) of tensors that are always fully selected and never counted
#: or frozen: every bias, every LayerNorm scale, the projection head, the classifier.
DEFAULT_EXEMPT: tuple[str, ...] = (
    r"(^|/)bias$",
    r"norm[^/]*/scale$",
    HEAD,
    r"(^|/)classifier/",
)

SELECTORS: tuple[str, ...] = ("fisher", "fish", "gradient", "magnitude", "random")
UNITS: tuple[str, ...] = ("official", "leaf")
#: Leaves fused into one unit under units="official": the q/k/v kernels sharing a prefix.
_QKV = re.compile(r"^(.*/)?(query|key|value)/kernel$")


class MistState(NamedTuple):
    """What MIST carries from task to task (docs/algorithm.md §8; code `overlap_mask`, `frozen_masks`).

    Attributes:
      count: int32 pytree shaped like params: how many earlier tasks selected each element.
      frozen: bool pytree shaped like params: elements that are never updated again.
    """

    count: PyTree
    frozen: PyTree


@jax.jit
def _count_and_freeze(counts, masks, frozen, scores, thresholds):
    """``count + mask`` and ``frozen | (score >= threshold)`` per leaf (exact)."""
    return ([c + m.astype(jnp.int32) for c, m in zip(counts, masks)],
            [f | (s.astype(jnp.float32) >= t) for f, s, t in zip(frozen, scores, thresholds)])


def check_rate(name: str, rate: float, low_inclusive: bool = False, usual: str = "0.1") -> None:
    """The one check of every MIST rate: ``rate`` in (0, 1], or [0, 1] with ``low_inclusive``.

    Raises: ValueError naming ``name``, the interval, the value and ``usual`` (a typical value).
    """
    ok = (0.0 <= float(rate) <= 1.0) if low_inclusive else (0.0 < float(rate) <= 1.0)
    if not ok:
        interval = "[0, 1]" if low_inclusive else "(0, 1]"
        raise ValueError(f"{name} must be in {interval}, got {rate}; e.g. {usual}.")


def _check_units(units: str) -> None:
    if units not in UNITS:
        raise ValueError(f"units must be one of {UNITS}, got {units!r}.")


def unit_groups(tree: PyTree, exempt: Sequence[str] | None = DEFAULT_EXEMPT,
                units: str = "official") -> list[tuple[str, list[int]]]:
    """The selection units of `tree`: (unit name, leaf indices in tree order) per unit.

    Exempt leaves belong to no unit. With ``units="official"`` the non-exempt
    `<prefix>query/kernel`, `<prefix>key/kernel` and `<prefix>value/kernel` leaves form one unit
    named `<prefix>qkv/kernel` (timm's fused `attn.qkv.weight`); every other leaf is its own
    unit named by its path. With ``units="leaf"`` every non-exempt leaf is a unit.

    Raises:
      ValueError: unknown `units`.
    """
    _check_units(units)
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    skip = jax.tree.leaves(exempt_tree(tree, exempt))
    groups: dict[str, list[int]] = {}
    for i, ((path, _), is_exempt) in enumerate(zip(flat, skip)):
        if is_exempt:
            continue
        name = path_str(path)
        m = _QKV.match(name) if units == "official" else None
        groups.setdefault(f"{m.group(1) or ''}qkv/kernel" if m else name, []).append(i)
    return list(groups.items())


def _unit_thresholds(scores: PyTree, q: float, exempt, units: str) -> list:
    """Per leaf of `scores` (tree order): its unit's quantile(q) threshold, None if exempt."""
    leaves = jax.tree.leaves(scores)
    out: list = [None] * len(leaves)
    for _, idx in unit_groups(scores, exempt, units):
        t = quantiles.threshold(tuple(leaves[i] for i in idx), q)
        for i in idx:
            out[i] = t
    return out


def select_top(
    scores: PyTree, select_rate: float, exempt: Sequence[str] | None = DEFAULT_EXEMPT,
    units: str = "official",
) -> PyTree:
    """Per-unit top-quantile mask: `score >= quantile(score, 1 - select_rate)` (docs/algorithm.md §5).

    The quantile is taken per selection unit (module docstring): each tensor, with a block's
    q/k/v kernels fused into one unit under ``units="official"`` as in the official code.

    Args:
      scores: float pytree (any shapes); higher = more important.
      select_rate: static float in (0, 1]; fraction of each unit to select (ties at the
        threshold are all selected, so slightly more may be).
      exempt: path regexes of tensors that are fully selected whatever their score.
      units: "official" (fused q/k/v) or "leaf".

    Returns:
      bool pytree shaped like `scores`.

    Raises:
      ValueError: select_rate outside (0, 1] or unknown units.
    """
    check_rate("select_rate", select_rate)
    leaves, treedef = jax.tree.flatten(scores)
    thresholds = _unit_thresholds(scores, 1.0 - float(select_rate), exempt, units)
    scored = [i for i, t in enumerate(thresholds) if t is not None]
    above = iter(quantiles.at_least([leaves[i] for i in scored], [thresholds[i] for i in scored]))
    out = [jnp.ones(jnp.shape(s), bool) if t is None else next(above)
           for s, t in zip(leaves, thresholds)]
    return jax.tree.unflatten(treedef, out)


def random_scores(params: PyTree, seed: int | jax.Array = 0) -> PyTree:
    """Uniform [0, 1) float32 scores shaped like `params`, one fold_in(key, leaf index) each
    (key: `seed` if it is a PRNG key, else ``jax.random.key(seed)``).

    Used by the "random" selector: `select_top(random_scores(...), rate)` picks a random subset
    of the same per-tensor size as the other selectors.
    """
    leaves, treedef = jax.tree.flatten(params)
    key = seed if isinstance(seed, jax.Array) else jax.random.key(seed)
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
    seed: int | jax.Array = 0,
    exempt: Sequence[str] | None = DEFAULT_EXEMPT,
    units: str = "official",
) -> PyTree:
    """Selection with the same per-unit budget for every ablation selector (docs/algorithm.md §12).

    Args:
      kind: "fisher", "fish" or "gradient" (pass the matching `scores`, ``mist.score``),
        "magnitude" (|w| of `params`), or "random" (uniform scores from `seed`; shapes from
        `params` or `scores`). The random mask is drawn once per call (per task), not per step.
      select_rate: static float in (0, 1].
      params: parameter pytree (needed for "magnitude"; shapes for "random").
      scores: score pytree (needed for "fisher", "fish" and "gradient").
      seed: PRNG seed or key for "random".
      exempt: path regexes of always-selected tensors.
      units: selection units, "official" (fused q/k/v) or "leaf" (see `select_top`).

    Returns:
      bool pytree shaped like params/scores.

    Raises:
      ValueError: unknown kind or units, or a missing input.
    """
    if kind not in SELECTORS:
        raise ValueError(f"unknown selector {kind!r}; choose one of {SELECTORS}.")
    if kind in ("fisher", "fish", "gradient"):
        if scores is None:
            source = ("fish.FishScorer's loss in sensitivity.fisher_scores" if kind == "fish"
                      else f"mist_jax.mist.sensitivity.{kind}_scores(...)")
            raise ValueError(f"selector {kind!r} needs scores={source} (or mist.score).")
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
    return select_top(chosen, select_rate, exempt, units)


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
    units: str = "official",
) -> MistState:
    """Bookkeeping after a task (docs/algorithm.md §8): count += mask; frozen |= top freeze_rate.

    For non-exempt leaves only: `count + mask` and
    `frozen | (score >= quantile(score, 1 - freeze_rate))` per selection unit (q/k/v kernels
    fused under ``units="official"``). Exempt leaves are returned unchanged (count 0, frozen
    False if they started so). The two official files differ: RanPAC's freezes the top 0.05%
    (`freeze_rate=0.0005`), SimpleCIL's `torch.quantile(s, 1)`, i.e. only each unit's maximum,
    ties included (`freeze_rate=0.0`).

    Args:
      state: MistState from `init_mist_state` or a previous call.
      mask: bool pytree of this task's selection.
      scores: float pytree of this task's sensitivity scores.
      freeze_rate: static float in [0, 1]; 0 freezes only each unit's maximum.
      exempt: path regexes of always-selected tensors.
      units: selection units, "official" (fused q/k/v) or "leaf".

    Returns:
      The new MistState.

    Raises:
      ValueError: freeze_rate outside [0, 1] or unknown units.
    """
    check_rate("freeze_rate", freeze_rate, low_inclusive=True)
    thresholds = _unit_thresholds(scores, 1.0 - float(freeze_rate), exempt, units)
    counts, treedef = jax.tree.flatten(state.count)
    frozen = treedef.flatten_up_to(state.frozen)
    mask_l, score_l = treedef.flatten_up_to(mask), treedef.flatten_up_to(scores)
    scored = [i for i, t in enumerate(thresholds) if t is not None]
    added, froze = _count_and_freeze([counts[i] for i in scored], [mask_l[i] for i in scored],
                                     [frozen[i] for i in scored], [score_l[i] for i in scored],
                                     [thresholds[i] for i in scored])
    new_count, new_frozen = list(counts), list(frozen)
    for i, c, f in zip(scored, added, froze):
        new_count[i], new_frozen[i] = c, f
    return MistState(count=jax.tree.unflatten(treedef, new_count),
                     frozen=jax.tree.unflatten(treedef, new_frozen))
