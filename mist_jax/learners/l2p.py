"""L2P: Learning to Prompt for continual learning (Wang et al., CVPR 2022, arXiv 2112.08654).

A pool of ``M = pool_size`` prompts, each ``L = length`` tokens of width ``D`` with a learnable
key ``k_m`` (float32[D]). An image's query ``q(x)`` is the CLS feature of the backbone without
prompts (frozen; with MIST, the tuned backbone). The ``N = top_k`` prompts whose keys are most
cosine-similar to the query (paper Eq. 3) are prepended after CLS (prompt tuning, N * L tokens),
the classifier reads the mean of their outputs (the reference code's ``head_type="prompt"``),
and training minimises (paper Eq. 5)

    CE(logits of the task's classes, y) - lambda * sum_n cos(q(x), k_{s_n}) / B

(the surrogate loss pulls the chosen keys towards the queries; lambda = ``pull_coeff``). Logits
of classes outside the current task are masked during training (the paper's train mask).

Reference code followed: google-research/l2p (JAX) and its PyTorch ports (l2p-pytorch,
LAMDA-PILOT ``models/l2p.py``): uniform(-1, 1) prompts and keys, keys and queries L2-normalised
with eps 1e-12 (``prompting.py``), and ``batchwise_prompt``: during training, every image of a
batch uses the N prompts chosen most often over the batch. At test time each image uses its own
top-N (paper Eq. 3) by default; LAMDA-PILOT votes over the test batch too (``test_vote=True``),
which makes a prediction depend on the other images of its batch (and, with its class-sorted
test batches, raises its published numbers). Gradients are clipped at global norm
``clip_grad_norm = 1.0`` as google-research/l2p (``grad_clip_max_norm``; LAMDA-PILOT: 0, off).
Prompt tokens get no position embedding, as google-research/l2p's ``Encoder`` (it prepends the
prompts after ``AddPositionEmbs``). Defaults follow LAMDA-PILOT's L2P
settings (pool 10, length 5, top-N 5, pull coefficient 0.1, Adam, constant learning rate,
optimizer reset per task) and the L2P paper's learning rate 0.03 at batch 256, scaled to 16.
The 5 epochs at batch 16 are this library's choice for small streams, not a reference value.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp
from flax import struct

from mist_jax.learners.prompting import (KeyedPromptLearner, init_linear_head, pull,
                                         select_prompts)
from mist_jax.mist.objectives import masked_cross_entropy
from mist_jax.models.extensions import Extensions, init_prompts


@struct.dataclass
class L2PState:
    """``params``: ``{"prompts": float32[M, L, D], "keys": float32[M, D], "kernel":
    float32[D, C], "bias": float32[C]}`` (all trained)."""

    params: dict


@dataclasses.dataclass(frozen=True, kw_only=True)
class L2P(KeyedPromptLearner):
    """L2P (module docstring). Config block ``learner.l2p``: ``pool_size`` (M), ``length``
    (L tokens per prompt), ``top_k`` (N prompts per image), ``pull_coeff`` (lambda of the
    surrogate loss), ``batchwise_prompt`` (training), ``test_vote`` (batchwise at test time),
    ``clip_grad_norm`` (0 = off), and the loop's ``epochs``, ``batch_size``,
    ``learning_rate`` (Adam)."""

    name: ClassVar[str] = "l2p"
    pool_size: int = 10
    length: int = 5
    top_k: int = 5
    batchwise_prompt: bool = True

    def __post_init__(self):
        if not 1 <= self.top_k <= self.pool_size:
            raise ValueError(f"learner.l2p.top_k must be in [1, pool_size={self.pool_size}], "
                             f"got {self.top_k}.")

    def init(self, key, feature_dim: int) -> L2PState:
        """Prompts and keys uniform(-1, 1); head truncated normal (std 0.02, timm's ViT head
        init) and zero bias."""
        kp, kk, kh = jax.random.split(key, 3)
        return L2PState({
            "prompts": init_prompts(kp, self.model, self.length, pool=self.pool_size),
            "keys": jax.random.uniform(kk, (self.pool_size, feature_dim), jnp.float32, -1, 1),
            **init_linear_head(kh, feature_dim, self.num_classes)})

    def query(self, backbone, images: jax.Array) -> jax.Array:
        """float32[B, D] CLS features of the backbone without prompts (no gradient)."""
        cls = self.model.apply({"params": backbone}, self.preprocess(images), tokens="cls")
        return jax.lax.stop_gradient(cls)

    def forward(self, params: dict, backbone, images: jax.Array, batchwise: bool
                ) -> tuple[jax.Array, jax.Array]:
        """``(logits float32[B, C], pull float32)``: the classifier on the mean output of the
        N * L chosen prompt tokens, and ``sum_{b, n} cos(q_b, k_{s_bn}) / B``."""
        query = self.query(backbone, images)
        ids, _ = select_prompts(query, params["keys"], self.top_k, batchwise)
        prompts = params["prompts"][ids]  # [B, N, L, D]
        prompts = prompts.reshape(prompts.shape[0], -1, prompts.shape[-1])
        tokens = self.model.apply({"params": backbone}, self.preprocess(images),
                                  ext=Extensions(prompts=prompts), tokens="prompts")
        logits = tokens.mean(axis=1) @ params["kernel"] + params["bias"]
        return logits, pull(query, params["keys"], ids)

    def logits(self, state: L2PState, backbone, images: jax.Array) -> jax.Array:
        """float32[B, C]: each image with its own top-N prompts (paper Eq. 3), or with the
        batch's most chosen N when ``test_vote``."""
        return self.forward(state.params, backbone, images, batchwise=self.test_vote)[0]

    def loss(self, params, state, backbone, images, labels, task_range) -> jax.Array:
        """Paper Eq. 5: masked cross-entropy minus ``pull_coeff`` times the pull term."""
        del state
        logits, matched = self.forward(params, backbone, images, self.batchwise_prompt)
        return masked_cross_entropy(logits, labels, task_range) - self.pull_coeff * matched
