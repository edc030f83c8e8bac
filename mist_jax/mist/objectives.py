"""Training objectives of MIST: the supervised NT-Xent MI bound and ablation alternatives.

Source: docs/algorithm.md §2; code utils/contrastive_learning.py
(`normalize`, `get_similarity_matrix`, `Supervised_NT_xent_n`). Supervised contrastive loss:
Khosla et al., "Supervised Contrastive Learning", NeurIPS 2020, Eq. 2 (L_out).

Every objective takes (outputs, labels) with labels int[B] for the B images; for the two-view
objectives outputs are float[2B, D] (rows 0..B-1 first views, B..2B-1 second views of the same
images). All math is in float32 whatever the input dtype; results are float32 scalars.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax

Objective = Callable[[jax.Array, jax.Array], jax.Array]


def _check_two_view(z: jax.Array, labels: jax.Array) -> int:
    if z.ndim != 2 or z.shape[0] % 2:
        raise ValueError(
            f"z must be float[2B, D] (first views then second views), got shape {z.shape}."
        )
    b = z.shape[0] // 2
    if labels.shape != (b,):
        raise ValueError(
            f"labels must be int[B] with B = z.shape[0] // 2 = {b}, got shape {labels.shape}; "
            "pass the labels of the B images once, not repeated per view."
        )
    return b


def _similarity(z: jax.Array) -> jax.Array:
    z = z.astype(jnp.float32)
    return jnp.matmul(z, z.T, precision=jax.lax.Precision.HIGHEST)


def supervised_nt_xent(
    z: jax.Array, labels: jax.Array, temperature: float = 0.07, eps: float = 1e-8
) -> jax.Array:
    """MIST's MI objective: `Supervised_NT_xent_n(get_similarity_matrix(z), labels, 0.07)`.

    With S = z z^T (2B x 2B): S <- S - stop_gradient(rowmax S); E = exp(S / tau) * (1 - I);
    P = E / (rowsum E + eps); l = -log(P + eps); m_ij = [y_i = y_j] (self pair included),
    w = m / (rowsum m + eps);
    L = (1/2B) sum_{i<B} (l[i, i+B] + l[i+B, i]) + (1/B) sum_ij w_ij l_ij.

    Args:
      z: float[2B, D] L2-normalised projections (any float dtype; computed in float32).
      labels: int[B] class labels of the B images.
      temperature: tau.
      eps: the code's 1e-8.

    Returns:
      float32 scalar loss.

    Raises:
      ValueError: shapes are not [2B, D] and [B].
    """
    b = _check_two_view(z, labels)
    s = _similarity(z)
    s = s - jax.lax.stop_gradient(jnp.max(s, axis=1, keepdims=True))
    off_diag = 1.0 - jnp.eye(2 * b, dtype=jnp.float32)
    e = jnp.exp(s / temperature) * off_diag
    p = e / (jnp.sum(e, axis=1, keepdims=True) + eps)
    l = -jnp.log(p + eps)
    y = jnp.concatenate([labels, labels])
    m = (y[:, None] == y[None, :]).astype(jnp.float32)
    w = m / (jnp.sum(m, axis=1, keepdims=True) + eps)
    pair = (jnp.trace(l[:b, b:]) + jnp.trace(l[b:, :b])) / (2 * b)
    return pair + jnp.sum(w * l) / b


def supcon(z: jax.Array, labels: jax.Array, temperature: float = 0.07) -> jax.Array:
    """Supervised contrastive loss L_out of Khosla et al. (2020), base temperature = temperature.

    For anchor i over the other 2B - 1 views: log p_ij = s_ij/tau - log sum_{k != i} exp(s_ik/tau);
    loss = -mean_i mean_{j != i, y_j = y_i} log p_ij (every anchor has its other view as a
    positive).

    Args:
      z: float[2B, D] L2-normalised projections.
      labels: int[B].
      temperature: tau.

    Returns:
      float32 scalar.

    Raises:
      ValueError: shapes are not [2B, D] and [B].
    """
    b = _check_two_view(z, labels)
    logits = _similarity(z) / temperature
    self_mask = jnp.eye(2 * b, dtype=bool)
    logits = jnp.where(self_mask, -jnp.inf, logits)
    log_prob = jax.nn.log_softmax(logits, axis=1)
    y = jnp.concatenate([labels, labels])
    pos = (y[:, None] == y[None, :]) & ~self_mask
    mean_pos = jnp.sum(jnp.where(pos, log_prob, 0.0), axis=1) / jnp.sum(pos, axis=1)
    return -jnp.mean(mean_pos)


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy (the "loss: CE" ablation).

    Args:
      logits: float[N, C] class logits (N = B, or 2B for two views).
      labels: int[B]; repeated to [2B] when logits has twice as many rows.

    Returns:
      float32 scalar.

    Raises:
      ValueError: N is neither B nor 2B.
    """
    if logits.ndim != 2 or logits.shape[0] not in (labels.shape[0], 2 * labels.shape[0]):
        raise ValueError(
            f"logits must be float[B or 2B, C] for labels int[B={labels.shape[0]}], "
            f"got shape {logits.shape}."
        )
    if logits.shape[0] != labels.shape[0]:
        labels = jnp.concatenate([labels, labels])
    return jnp.mean(
        optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)
    )


def masked_cross_entropy(logits: jax.Array, labels: jax.Array, task_range: jax.Array
                         ) -> jax.Array:
    """Mean cross-entropy over the task's classes only (logits float32[B, C], labels int32[B],
    task_range int32[2] = (start, end)): the other logits are masked to -inf (L2P's train
    mask; LAMDA-PILOT masks the earlier classes and drops the later ones, the same)."""
    classes = jnp.arange(logits.shape[-1])
    in_task = (classes >= task_range[0]) & (classes < task_range[1])
    logits = jnp.where(in_task, logits, -jnp.inf)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


OBJECTIVES: dict[str, Objective] = {
    "mi": supervised_nt_xent,
    "supcon": supcon,
    "ce": cross_entropy,
}


def get_objective(name: str) -> Objective:
    """Returns the objective registered as `name`: "mi", "supcon" or "ce".

    Raises:
      ValueError: unknown name.
    """
    try:
        return OBJECTIVES[name]
    except KeyError:
        raise ValueError(
            f"unknown objective {name!r}; choose one of {sorted(OBJECTIVES)}."
        ) from None
