"""What a MIST selection looks like: coverage per selection unit and per-task summaries.

Host-side reports of mist_jax/mist/masks.py's masks, for logs, results.json and the mask plots of
mist_jax/runner/outputs.py (code ``print_mask_coverage``). Only global reductions, so they also work on
arrays sharded over several processes (every process must call them).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from mist_jax.mist.masks import DEFAULT_EXEMPT, unit_groups
from mist_jax.infra.trees import compile_patterns, exempt_tree, tree_paths

PyTree = Any


def coverage(mask: PyTree, units: str = "official") -> dict[str, tuple[int, int]]:
    """Selection counts per selection unit (code `print_mask_coverage`).

    Args:
      mask: bool (or 0/1) pytree.
      units: "official": a block's q/k/v kernels are reported as one entry `<prefix>qkv/kernel`
        (timm's fused tensor); "leaf": one entry per leaf.

    Returns:
      dict unit name -> (selected, total) as Python ints, in tree order. Host sync.

    Raises:
      ValueError: unknown units.
    """
    leaves = jax.tree.leaves(mask)
    return {name: (sum(int(jnp.sum(leaves[i])) for i in idx),
                   sum(int(np.prod(jnp.shape(leaves[i]))) for i in idx))
            for name, idx in unit_groups(mask, None, units)}


#: Kernel roles of an encoder block reported by `task_summary` (timm: qkv split, proj, fc1, fc2).
ROLES = {"query/kernel": "q", "key/kernel": "k", "value/kernel": "v", "out/kernel": "proj",
         "fc1/kernel": "fc1", "fc2/kernel": "fc2"}
_BLOCK = re.compile(r"encoderblock_(\d+)/")


def task_summary(mask: PyTree, scores: PyTree, count: PyTree,
                 exempt: Sequence[str] | None = DEFAULT_EXEMPT) -> dict:
    """What one task's selection looks like, JSON-ready (the mask plots of mist_jax.runner.outputs).

    Over the scored (non-exempt) leaves only. Host sync; only global reductions, so it also
    works on arrays sharded over several processes (every process must call it).

    Args:
      mask: bool pytree, this task's selection.
      scores: float pytree, this task's sensitivity scores.
      count: int pytree, earlier tasks' selection counts (before this task's bookkeeping).
      exempt: path regexes of always-selected leaves (left out).

    Returns:
      dict with
        ``block_selected``: {role: [percent of that kernel selected, per encoder block]} for
          the roles q, k, v, proj, fc1, fc2 (None where a block has no such kernel; under
          fused q/k/v selection q, k and v differ);
        ``score_share``: {"embed": x, "blocks": [per block]}: fractions of the task's total
          score (embed = leaves outside any encoder block: patch, cls, position);
        ``overlap_histogram``: [number of this task's selected elements that c earlier tasks
          had selected, for c = 0, 1, ...].
    """
    paths = jax.tree.leaves(tree_paths(mask))
    skip = jax.tree.leaves(exempt_tree(mask, exempt))
    m_l, s_l, c_l = jax.tree.leaves(mask), jax.tree.leaves(scores), jax.tree.leaves(count)
    blocks = sorted({int(b.group(1)) for p in paths if (b := _BLOCK.search(p))})
    selected: dict = {r: [None] * len(blocks) for r in ROLES.values()}
    share = {"embed": 0.0, "blocks": [0.0] * len(blocks)}
    hist: list[int] = []
    for path, is_exempt, m, sc, c in zip(paths, skip, m_l, s_l, c_l):
        if is_exempt:
            continue
        b = _BLOCK.search(path)
        role = next((r for suffix, r in ROLES.items() if path.endswith(suffix)), None)
        if b and role:
            selected[role][blocks.index(int(b.group(1)))] = 100.0 * float(jnp.mean(m))
        total = float(jnp.sum(sc, dtype=jnp.float32))
        if b:
            share["blocks"][blocks.index(int(b.group(1)))] += total
        else:
            share["embed"] += total
        # Global reductions only: leaves may be sharded over several processes.
        top = int(jnp.max(jnp.where(m, c, 0)))
        hist += [0] * (top + 1 - len(hist))
        for k in range(top + 1):
            hist[k] += int(jnp.sum(m & (c == k)))
    norm = share["embed"] + sum(share["blocks"])
    if norm > 0:
        share = {"embed": share["embed"] / norm, "blocks": [x / norm for x in share["blocks"]]}
    return {"block_selected": selected, "score_share": share, "overlap_histogram": hist}


def overall_fraction(
    report: dict[str, tuple[int, int]], exclude: Sequence[str] | None = None
) -> float:
    """Selected / total over all tensors of a `coverage` report, skipping paths matching `exclude`.

    E.g. `overall_fraction(coverage(mask), DEFAULT_EXEMPT)` is the budget actually spent on
    scored weights (about select_rate). Returns 0.0 if nothing is left.
    """
    compiled = compile_patterns(exclude)
    kept = [v for k, v in report.items() if not any(c.search(k) for c in compiled)]
    total = sum(t for _, t in kept)
    return sum(s for s, _ in kept) / total if total else 0.0
