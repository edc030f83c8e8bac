"""Exemplar-free semantic drift compensation (SDC; Yu et al., CVPR 2020).

When the backbone moves (MIST tunes it on every task), old class prototypes computed with the
old backbone drift away from where the new backbone puts those classes. SDC estimates each old
prototype's drift from the current task's data, seen through the backbone before and after
tuning: delta_i = f_after_i - f_before_i, and

    p_new = p + sum_i w_i delta_i / sum_i w_i,   w_i = exp(-||f_before_i - p||^2 / (2 sigma^2)).

This is ``displacement`` of the authors' code (github.com/yulu0724/SDC-IL, test.py), whose demo
script uses sigma = 0.3 on its L2-normalised embeddings: sigma is a distance in feature units,
so rescale it (or normalise the features) for features of another norm.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

DEFAULT_SIGMA = 0.3


@jax.jit
def compensate_drift(prototypes: jax.Array, features_before: jax.Array,
                     features_after: jax.Array, sigma: float = DEFAULT_SIGMA) -> jax.Array:
    """Move old prototypes by the Gaussian-weighted mean drift of the current task's features.

    The weights are normalised in log space (a softmax over samples), which equals the formula
    above whenever its sum of weights does not underflow, and stays finite (nearest samples
    dominate) where the original would divide 0 by 0.

    Args:
      prototypes: float[K, D] old prototypes (old backbone).
      features_before: float[N, D] current-task features with the backbone before tuning.
      features_after: float[N, D] the same images' features after tuning.
      sigma: kernel width > 0, in feature-distance units.

    Returns:
      float32[K, D] compensated prototypes.
    """
    p = jnp.asarray(prototypes, jnp.float32)
    before = jnp.asarray(features_before, jnp.float32)
    after = jnp.asarray(features_after, jnp.float32)
    sq_dist = (jnp.sum(p**2, axis=1)[:, None] + jnp.sum(before**2, axis=1)[None, :]
               - 2.0 * p @ before.T)  # [K, N]
    weights = jax.nn.softmax(-jnp.maximum(sq_dist, 0.0) / (2.0 * sigma**2), axis=1)
    return p + weights @ (after - before)
