"""L2 normalisation as each reference code writes it. The three formulas agree to rounding
but not bitwise, and each port must match its reference bit for bit, so the convention is
named at every call:

* ``"mist"``: ``x / (||x|| + 1e-8)`` in float32 (MIST's ``utils/contrastive_learning.py:
  normalize``; the norm via ``optax.safe_norm``, so the gradient at 0 is finite);
* ``"tf"``: ``x * rsqrt(max(||x||^2, 1e-12))`` (``tf.math.l2_normalize``: google-research/l2p,
  and the prompt learners' PyTorch ports);
* ``"torch"``: ``x / max(||x||, 1e-12)`` (``torch.nn.functional.normalize``: SimpleCIL's
  cosine classifier, APER's and EASE's cosine heads).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

CONVENTIONS = ("mist", "tf", "torch")


def l2_normalize(x: jax.Array, axis: int = -1, *, convention: str = "torch") -> jax.Array:
    """``x`` scaled to unit L2 norm along ``axis`` (module docstring for ``convention``).

    Args: x float array of any shape; axis: the axis normalised over. Returns an array shaped
    like ``x`` (float32 for ``"mist"``, else ``x``'s dtype). Raises ValueError for an unknown
    convention.
    """
    if convention == "mist":
        x = x.astype(jnp.float32)
        return x / (optax.safe_norm(x, 0.0, axis=axis, keepdims=True) + 1e-8)
    if convention == "tf":
        sq = jnp.sum(x * x, axis=axis, keepdims=True)
        return x * jax.lax.rsqrt(jnp.maximum(sq, 1e-12))
    if convention == "torch":
        return x / jnp.maximum(jnp.linalg.norm(x, axis=axis, keepdims=True), 1e-12)
    raise ValueError(f"Unknown L2-normalisation convention {convention!r}; use one of "
                     f"{CONVENTIONS}.")
