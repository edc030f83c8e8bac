"""Per-unit quantile thresholds of MIST's selection and freezing (docs/algorithm.md §5, §8):
numpy's / torch's linear-interpolation quantile, with the sorting and the comparisons compiled
once per shape (exact operations: the same bits as op by op) and the interpolation on the two
picked scalars done as numpy does it."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np


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
    return threshold((x,), q)


def threshold(parts: tuple, q: float) -> jax.Array:
    """``quantile_threshold`` of all elements of ``parts`` (arrays) taken together: one
    selection unit of several tensors (a block's fused q/k/v)."""
    n = sum(int(np.prod(jnp.shape(x))) for x in parts)
    if n == 0:
        raise ValueError("quantile of an empty tensor is undefined; drop the empty parameter.")
    virtual = (n - 1) * q  # numpy's 'linear' virtual index (Hyndman & Fan method 7)
    lo = min(max(int(math.floor(virtual)), 0), n - 1)
    hi = min(lo + 1, n - 1)
    g = virtual - math.floor(virtual) if 0 <= virtual < n - 1 else 0.0
    a, b = sorted_at(tuple(parts), lo, hi)
    if g >= 0.5:
        return b - (b - a) * np.float32(1.0 - g)
    return a + (b - a) * np.float32(g)


@jax.jit
def sorted_at(parts: tuple, lo, hi) -> tuple[jax.Array, jax.Array]:
    """Elements lo and hi of the float32 sort of all of ``parts`` (one program per shape:
    sorting and indexing are exact, so this equals the op-by-op result bit for bit)."""
    s = jnp.sort(jnp.concatenate([jnp.ravel(p).astype(jnp.float32) for p in parts]))
    return s[lo], s[hi]


@jax.jit
def at_least(leaves: list, thresholds: list) -> list:
    """``leaf >= threshold`` per leaf, in float32 (exact: one program for the whole tree)."""
    return [x.astype(jnp.float32) >= t for x, t in zip(leaves, thresholds)]
