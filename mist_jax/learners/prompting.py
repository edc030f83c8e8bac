"""What the prompt- and adapter-based learners share: key-query matching over a prompt pool
(L2P, DualPrompt), the train-masked cross-entropy, the linear head's init and the reference's
cosine head (APER, EASE).

Reference code: google-research/l2p (JAX) and its PyTorch ports (l2p-pytorch, LAMDA-PILOT's
``models/l2p.py`` / ``dualprompt.py``): keys and queries are L2-normalised with eps 1e-12 on
the squared norm; the query is the CLS feature of the backbone without prompts.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax

from mist_jax.learners.images import ImageLearner
from mist_jax.models.normalize import l2_normalize


def tf_normalize(x: jax.Array) -> jax.Array:
    """The reference code's ``l2_normalize`` along the last axis (``"tf"`` convention)."""
    return l2_normalize(x, convention="tf")


def select_prompts(query: jax.Array, keys: jax.Array, top_k: int, batchwise: bool
                   ) -> tuple[jax.Array, jax.Array]:
    """Key-query matching (L2P, Wang et al. CVPR 2022, Eq. 3): the ``top_k`` keys most
    cosine-similar to each query.

    Args:
      query: float32[B, D] queries; keys: float32[M, D]; ``top_k`` <= M.
      batchwise: every query gets the ``top_k`` ids chosen most often over the batch (ties:
        the lower id), as the reference code's ``batchwise_prompt``.
    Returns:
      ``(ids int32[B, top_k], cos float32[B, M])``: the chosen prompt ids (in decreasing
      similarity, or decreasing count when batchwise) and all query-key cosines.
    """
    cos = tf_normalize(query) @ tf_normalize(keys).T
    _, ids = jax.lax.top_k(cos, top_k)
    if batchwise:
        ids = vote(ids, keys.shape[0])
    return ids.astype(jnp.int32), cos


def pull(query: jax.Array, keys: jax.Array, ids: jax.Array) -> jax.Array:
    """The surrogate matching term ``sum_{b, n} cos(q_b, k_{ids[b, n]}) / B`` (float32 scalar;
    its gradient reaches the chosen keys only; the query is treated as given).
    query float32[B, D], keys float32[M, D], ids int32[B, N]."""
    q = jax.lax.stop_gradient(tf_normalize(query))
    return jnp.sum(tf_normalize(keys)[ids] * q[:, None]) / query.shape[0]


def init_linear_head(key: jax.Array, feature_dim: int, num_classes: int) -> dict:
    """Linear head ``{"kernel": float32[D, C], "bias": float32[C]}``: truncated normal kernel
    (std 0.02, timm's ViT head init), zero bias."""
    kernel = 0.02 * jax.random.truncated_normal(key, -2.0, 2.0, (feature_dim, num_classes))
    return {"kernel": kernel, "bias": jnp.zeros((num_classes,), jnp.float32)}


def init_torch_linear_head(key: jax.Array, feature_dim: int, num_classes: int) -> dict:
    """PyTorch ``nn.Linear(D, C)``'s default init as ``{"kernel": float32[D, C], "bias":
    float32[C]}``: both uniform in +-1/sqrt(D) (kaiming_uniform with a = sqrt(5), and the
    bias bound 1/sqrt(fan_in)); CODA-Prompt's head (``models/zoo.py``: ``self.last``)."""
    bound = feature_dim ** -0.5
    kk, kb = jax.random.split(key)
    return {"kernel": jax.random.uniform(kk, (feature_dim, num_classes), jnp.float32, -bound,
                                         bound),
            "bias": jax.random.uniform(kb, (num_classes,), jnp.float32, -bound, bound)}


def init_cosine_head(key: jax.Array, feature_dim: int, num_classes: int) -> dict:
    """The reference ``CosineLinear`` (APER, EASE): ``{"weight": float32[C, D]`` uniform in
    +-1/sqrt(D) (its ``reset_parameters``), ``"sigma": float32`` scale 1 (learnable)}."""
    bound = feature_dim ** -0.5
    weight = jax.random.uniform(key, (num_classes, feature_dim), jnp.float32, -bound, bound)
    return {"weight": weight, "sigma": jnp.ones((), jnp.float32)}


def cosine_head_logits(head: dict, features: jax.Array) -> jax.Array:
    """float32[N, C]: ``sigma * cos(features[n], weight[c])`` for ``init_cosine_head``'s head
    and features float32[N, D] (norms clipped at 1e-12, torch ``F.normalize``)."""
    return head["sigma"] * (l2_normalize(features) @ l2_normalize(head["weight"]).T)


@dataclasses.dataclass(frozen=True, kw_only=True)
class KeyedPromptLearner(ImageLearner):
    """What L2P and DualPrompt share: ``pull_coeff`` (lambda of the key-pull term),
    ``test_vote`` (the test batch's majority choice, LAMDA-PILOT), ``clip_grad_norm`` (global
    gradient norm before Adam; google-research/l2p: 1.0; 0 = off) and the loop's ``epochs``,
    ``batch_size`` and ``learning_rate`` (L2P's 0.03 at batch 256, scaled to 16)."""

    pull_coeff: float = 0.1
    test_vote: bool = False
    clip_grad_norm: float = 1.0
    epochs: int = 5
    batch_size: int = 16
    learning_rate: float = 0.03 * 16 / 256

    def optimizer(self, steps_per_epoch: int) -> optax.GradientTransformation:
        """Adam after global-norm clipping at ``clip_grad_norm`` (``clipped_adam``)."""
        del steps_per_epoch
        return clipped_adam(self.learning_rate, self.clip_grad_norm)


def clipped_adam(learning_rate, clip_grad_norm: float) -> optax.GradientTransformation:
    """Adam, after clipping the update's global gradient norm at ``clip_grad_norm`` (0: no
    clipping): google-research/l2p's ``grad_clip_max_norm = 1.0`` (configs/*_l2p.py,
    configs/*_dualprompt.py); LAMDA-PILOT does not clip.
    Raises: ValueError for a negative ``clip_grad_norm``."""
    if clip_grad_norm < 0:
        raise ValueError(f"clip_grad_norm must be >= 0 (0 = off), got {clip_grad_norm}.")
    adam = optax.adam(learning_rate)
    return optax.chain(optax.clip_by_global_norm(clip_grad_norm), adam) if clip_grad_norm else adam


def vote(ids: jax.Array, pool_size: int) -> jax.Array:
    """The reference code's ``batchwise_prompt``: every image gets the N ids chosen most often
    over the batch (in decreasing count; ties: the lower id). ids int32[B, N] -> int32[B, N]."""
    counts = jax.nn.one_hot(ids, pool_size, dtype=jnp.int32).sum(axis=(0, 1))
    _, major = jax.lax.top_k(counts, ids.shape[1])
    return jnp.broadcast_to(major, ids.shape)
