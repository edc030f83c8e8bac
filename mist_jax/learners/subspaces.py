"""EASE's subspace ensemble (Zhou et al. CVPR 2024; reference ``solve_sim_reset`` and
``CosineLinear.forward_reweight``): the semantic-guided complement of old classes' prototypes
in later subspaces, and the reweighted cosine logits over all subspaces. Pure functions,
jit-able; the equations are in ``learners/ease.py``'s docstring."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from mist_jax.models.normalize import l2_normalize


def unstack_adapter(stacked: dict, depth: int) -> dict:
    """``{i: adapter of block i}`` (``Extensions.adapters``) from the leaves float32[L, ...]."""
    return {i: jax.tree.map(lambda a, i=i: a[i], stacked) for i in range(depth)}


def complement_prototypes(prototypes: jax.Array, class_task: jax.Array,
                          num_done: jax.Array) -> jax.Array:
    """The paper's semantic-guided prototype complement (the reference
    ``solve_sim_reset`` with ``recalc_sim=True``) over the adapter subspaces.

    Args:
      prototypes: float32[C, T, D]; row c, subspace j is measured when ``class_task[c] >= j``.
      class_task: int32[C], the task of each class (-1: unseen, left unchanged).
      num_done: int32[], tasks (adapter subspaces) so far.
    Returns:
      float32[C, T, D]: for a seen class c of task i and each subspace i < j < num_done,
      ``sum_k softmax_k(cos(P[c, i], P[k, i])) P[k, j]`` over the classes k of tasks in
      [j, num_done); all other entries unchanged.
    """
    num_subspaces = prototypes.shape[1]
    unit = l2_normalize(prototypes)  # [C, T, D]
    cos = jnp.einsum("ctd,ktd->tck", unit, unit)  # [T, C, C]: cosines within subspace t
    own = jnp.clip(class_task, 0, num_subspaces - 1)
    sim = jnp.take_along_axis(cos, own[None, :, None], axis=0)[0]  # [C, C] in c's subspace
    out = prototypes
    for j in range(1, num_subspaces):
        donors = class_task >= j  # measured in subspaces i < j and j
        weights = jax.nn.softmax(jnp.where(donors[None, :], sim, -jnp.inf), axis=1)
        weights = jnp.where(donors[None, :], weights, 0.0)  # rows with no donor: all zero
        complement = weights @ prototypes[:, j]
        fill = (class_task >= 0) & (class_task < j) & (j < num_done)
        out = out.at[:, j].set(jnp.where(fill[:, None], complement, out[:, j]))
    return out


def reweighted_logits(features: jax.Array, prototypes: jax.Array, class_task: jax.Array,
                      num_done: jax.Array, alpha: float, beta: float, ptm: bool) -> jax.Array:
    """Subspace-reweighted cosine classifier (the paper's subspace reweighting; the
    reference ``CosineLinear.forward_reweight`` with sigma 1).

    Args:
      features: float32[N, S, D] per-subspace CLS features (``ptm``: subspace 0 is the
        adapter-free backbone, then the T adapters).
      prototypes: float32[C, S, D]; class_task int32[C]; num_done int32[] (tasks done).
      alpha, beta: weights of the other adapter subspaces (divided by ``num_done - 1``) and of
        the PTM subspace.
    Returns:
      float32[N, C]: ``sum_j w[c, j] cos(features[:, j], prototypes[c, j])`` with
      ``w = 1`` on the class's own adapter subspace, ``alpha / (num_done - 1)`` on the other
      adapter subspaces < num_done, ``beta`` on the PTM subspace and 0 elsewhere.
    """
    offset = int(ptm)
    adapter = jnp.arange(prototypes.shape[1]) - offset  # adapter index of each subspace
    others = alpha / jnp.maximum(num_done - 1, 1).astype(jnp.float32)
    weight = jnp.where(adapter[None, :] == class_task[:, None], 1.0, others)
    weight = jnp.where(adapter[None, :] < num_done, weight, 0.0)
    weight = jnp.where(adapter[None, :] < 0, beta, weight)  # [C, S]
    cos = jnp.einsum("nsd,csd->ncs", l2_normalize(features), l2_normalize(prototypes))
    return jnp.einsum("ncs,cs->nc", cos, weight)
