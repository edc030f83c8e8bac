"""DualPrompt: complementary prompting for rehearsal-free continual learning (Wang et al.,
ECCV 2022, arXiv 2204.04799).

Two kinds of prompts, both as prefix tuning (a prompt's key and value halves, each
``L`` tokens of width ``D``, are prepended to a block's projected keys and values; paper
Eq. 2, ``Extensions.prefix``):

* the G-prompt (general, shared by all tasks) in blocks ``g_layers`` (default 0, 1), length
  ``g_length``;
* E-prompts (expert, one per task, a pool of ``pool_size`` with learnable keys ``k_t``) in
  blocks ``e_layers`` (default 2, 3, 4), length ``e_length``.

While task t trains, every image uses E-prompt t and the loss is (paper Eq. 6)

    CE(logits of the task's classes, y) - lambda * cos(q(x), k_t)   (mean over the batch)

with ``q(x)`` the CLS feature of the backbone without prompts (frozen; with MIST, the tuned
backbone) and lambda = ``pull_coeff``. At test time each image uses the E-prompt whose key is
most cosine-similar to its query (paper Eq. 3 with N = 1). The classifier reads the prompted
CLS output (the reference code's ``head_type="token"``). E-prompts and keys of other tasks get
no gradient, so Adam (no weight decay) leaves them bitwise unchanged.

Reference code followed: google-research/l2p (``dualprompt``) and LAMDA-PILOT's
``models/dualprompt.py`` (``use_prompt_mask``: the task's own E-prompt in training; uniform(-1,
1) init of prompts and keys; prefix key and value each ``L`` tokens). As both references for
ImageNet-R (``shared_prompt_pool: true``, ``shared_prompt_key: false``), task t's E-prompt
starts from task t-1's trained one (its matching key does not). Gradients are clipped at global
norm ``clip_grad_norm = 1.0`` as google-research/l2p (LAMDA-PILOT: 0, off). At test time each
image takes its own best key by default; ``test_vote=True`` gives the whole test batch the
E-prompt chosen most often in it, as LAMDA-PILOT (``batchwise_prompt``). Deviation: at test
time only the keys of the tasks trained so far are candidates (the reference compares the whole
pool, whose later keys are still at their random init before their tasks). Defaults: LAMDA-
PILOT's DualPrompt settings (G length 5 in blocks 0-1, E length 5 in blocks 2-4, pool 10,
pull coefficient 0.1, Adam, constant learning rate, optimizer reset per task) with the L2P
learning rate 0.03 at batch 256 scaled to batch 16. The 5 epochs at batch 16 are this library's
choice for small streams, not a reference value.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp
from flax import struct

from mist_jax.learners.prompting import (KeyedPromptLearner, init_linear_head, pull,
                                         tf_normalize, vote)
from mist_jax.mist.objectives import masked_cross_entropy
from mist_jax.models.extensions import Extensions, init_prompts


@struct.dataclass
class DualPromptState:
    """``params`` (all trained): ``g_key``/``g_value`` float32[len(g_layers), Lg, D],
    ``e_key``/``e_value`` float32[len(e_layers), M, Le, D], ``keys`` float32[M, D],
    ``kernel`` float32[D, C], ``bias`` float32[C]. ``task``: int32 scalar, tasks finished
    (the E-prompt of the task being trained)."""

    params: dict
    task: jax.Array


@dataclasses.dataclass(frozen=True, kw_only=True)
class DualPrompt(KeyedPromptLearner):
    """DualPrompt (module docstring). Config block ``learner.dualprompt``: ``g_layers``,
    ``g_length``, ``e_layers``, ``e_length``, ``pool_size`` (E-prompts; at least the number
    of tasks), ``pull_coeff``, ``shared_prompt_pool`` (task t's E-prompt starts from t-1's),
    ``test_vote``, ``clip_grad_norm`` (0 = off), and the loop's ``epochs``, ``batch_size``,
    ``learning_rate``.

    Raises: ValueError (at construction) for a pool smaller than the run's tasks, overlapping
    or out-of-range layers.
    """

    name: ClassVar[str] = "dualprompt"
    g_layers: tuple = (0, 1)
    g_length: int = 5
    e_layers: tuple = (2, 3, 4)
    e_length: int = 5
    pool_size: int = 10
    shared_prompt_pool: bool = True

    def __post_init__(self):
        g, e = tuple(self.g_layers), tuple(self.e_layers)
        depth = getattr(self.model, "depth", None)
        if set(g) & set(e) or any(i < 0 or (depth is not None and i >= depth) for i in g + e):
            raise ValueError(f"learner.dualprompt: g_layers {g} and e_layers {e} must be "
                             f"disjoint blocks of the ViT (0..{depth - 1 if depth else '?'})")
        if self.num_tasks > self.pool_size:
            raise ValueError(f"learner.dualprompt.pool_size={self.pool_size} is smaller than "
                             f"the run's {self.num_tasks} tasks (one E-prompt per task); set "
                             f"--config.learner.dualprompt.pool_size={self.num_tasks}.")

    def init(self, key, feature_dim: int) -> DualPromptState:
        """Prompts and keys uniform(-1, 1); head truncated normal (std 0.02), zero bias."""
        ks = jax.random.split(key, 6)
        ng, ne = len(self.g_layers), len(self.e_layers)
        prompts = lambda k, n, length, pool=None: jnp.stack(
            [init_prompts(kk, self.model, length, pool=pool) for kk in jax.random.split(k, n)])
        return DualPromptState({
            "g_key": prompts(ks[0], ng, self.g_length),
            "g_value": prompts(ks[1], ng, self.g_length),
            "e_key": prompts(ks[2], ne, self.e_length, self.pool_size),
            "e_value": prompts(ks[3], ne, self.e_length, self.pool_size),
            "keys": jax.random.uniform(ks[4], (self.pool_size, feature_dim), jnp.float32, -1, 1),
            **init_linear_head(ks[5], feature_dim, self.num_classes)}, jnp.zeros((), jnp.int32))

    def query(self, backbone, images: jax.Array) -> jax.Array:
        """float32[B, D] CLS features of the backbone without prompts (no gradient)."""
        cls = self.model.apply({"params": backbone}, self.preprocess(images), tokens="cls")
        return jax.lax.stop_gradient(cls)

    def prefix(self, params: dict, ids: jax.Array) -> dict:
        """``Extensions.prefix``: ``{block: (key, value)}``, the G-prompt's float32[Lg, D]
        (shared) and the chosen E-prompts' float32[B, Le, D] (``ids`` int32[B])."""
        out = {i: (params["g_key"][j], params["g_value"][j]) for j, i in enumerate(self.g_layers)}
        out.update({i: (params["e_key"][j][ids], params["e_value"][j][ids])
                    for j, i in enumerate(self.e_layers)})
        return out

    def classify(self, params: dict, backbone, images: jax.Array, ids: jax.Array) -> jax.Array:
        """float32[B, C]: the linear head on the CLS output with the G- and E-prefixes."""
        cls = self.model.apply({"params": backbone}, self.preprocess(images),
                               ext=Extensions(prefix=self.prefix(params, ids)), tokens="cls")
        return cls @ params["kernel"] + params["bias"]

    def logits(self, state: DualPromptState, backbone, images: jax.Array) -> jax.Array:
        """float32[B, C]: each image with the E-prompt of its best-matching trained key (with
        ``test_vote``: the one chosen most often over the batch)."""
        keys = state.params["keys"]
        seen = jnp.arange(keys.shape[0]) < jnp.maximum(state.task, 1)
        cos = tf_normalize(self.query(backbone, images)) @ tf_normalize(keys).T  # [B, M]
        ids = jnp.argmax(jnp.where(seen, cos, -jnp.inf), axis=1).astype(jnp.int32)
        if self.test_vote:
            ids = vote(ids[:, None], keys.shape[0])[:, 0]
        return self.classify(state.params, backbone, images, ids)

    def loss(self, params, state, backbone, images, labels, task_range) -> jax.Array:
        """Paper Eq. 6: masked cross-entropy with the task's E-prompt, minus ``pull_coeff``
        times the mean cosine of the queries to the task's key."""
        ids = jnp.full((images.shape[0],), state.task, jnp.int32)
        logits = self.classify(params, backbone, images, ids)
        matched = pull(self.query(backbone, images), params["keys"], ids[:, None])
        return masked_cross_entropy(logits, labels, task_range) - self.pull_coeff * matched

    def end_task(self, state: DualPromptState, task_range) -> DualPromptState:
        """The next task trains the next E-prompt; with ``shared_prompt_pool`` it starts as a
        copy of the one just trained (prefix key and value halves; not the matching key)."""
        del task_range
        t, params = state.task, dict(state.params)
        if self.shared_prompt_pool:
            nxt = jnp.minimum(t + 1, self.pool_size - 1)
            for name in ("e_key", "e_value"):
                params[name] = params[name].at[:, nxt].set(params[name][:, t])
        return state.replace(params=params, task=t + 1)
