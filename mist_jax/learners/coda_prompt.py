"""CODA-Prompt: COntinual Decomposed Attention-based prompting (Smith et al., CVPR 2023,
arXiv 2211.13218).

Each prompted block ``l`` (``layers``, default 0-4) has a pool of ``M = pool_size``
components ``P_m`` (float32[L, D]) with keys ``K_m`` and attention vectors ``A_m`` (float32[D]).
For a query ``q = q(x)`` (the CLS feature of the backbone without prompts; with MIST, the tuned
backbone) the block's prompt is the weighted sum (paper Eq. 4-5)

    alpha_m = cos(q * A_m, K_m),        p(x) = sum_m alpha_m P_m          float32[L, D]

whose first ``L / 2`` tokens are prepended to the block's projected keys and the last ``L / 2``
to its values (prefix tuning). Task t owns components ``[t * M_t, (t + 1) * M_t)`` with
``M_t = M // num_tasks``: while it trains, the sum runs over components ``[0, (t + 1) M_t)``,
those of earlier tasks are frozen (no gradient, so Adam leaves them bitwise unchanged) and the
later ones are left out; before task t its components are re-initialised orthonormal to every
earlier component (``orthonormal_block`` on the flattened ``P``, and on ``K``, ``A``). The classifier
reads the prompted CLS output; the cross-entropy masks the logits of other tasks' classes.

Reference code followed: GT-RIPL/CODA-Prompt ``models/zoo.py: CodaPrompt`` (``gram_schmidt``
with standard-normal draws, made orthogonal to the span of earlier components here:
``orthonormal_block``; the ``einsum`` of the attention, the key cosine and the component
sum; ``[:s].detach()`` of earlier components) and LAMDA-PILOT's ``coda_prompt`` settings (pool
100, length 8, blocks 0-4, orthogonality penalty weight 0, Adam, learning rate 1e-3 with the
reference's ``CosineSchedule`` stepped once per epoch: ``lr * cos(99 pi e / (200 (E - 1)))`` in
epoch e of E, restarted per task). The 5 epochs at batch 16 are this library's choice for small
streams, not a reference value.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from mist_jax.infra import seeds
from mist_jax.learners.images import ImageLearner
from mist_jax.learners.prompting import init_torch_linear_head, tf_normalize
from mist_jax.mist.objectives import masked_cross_entropy
from mist_jax.models.extensions import Extensions


@struct.dataclass
class CodaPromptState:
    """``params`` (trained): ``components`` float32[len(layers), M, L, D], ``keys`` and
    ``attention`` float32[len(layers), M, D], ``kernel`` float32[D, C], ``bias`` float32[C].
    ``task``: int32 scalar, tasks finished; ``key``: uint32[2] raw PRNG key of the
    orthogonal inits."""

    params: dict
    task: jax.Array
    key: jax.Array


def orthonormal_block(vectors: np.ndarray, start: int, stop: int, key) -> np.ndarray:
    """Rows ``[start, stop)`` of ``vectors`` (float[M, F]) replaced by standard-normal draws
    made orthonormal to the span of every earlier row and to each other; the other rows are
    returned unchanged. float32[M, F].

    CODA-Prompt's ``gram_schmidt`` projects each draw on every earlier row one by one, which
    is the same while those rows are mutually orthogonal (at their own init); once trained
    they are not, and only a projection on an orthonormal basis of their span (QR, here)
    leaves the new rows orthogonal to them.

    Raises: ValueError when ``stop`` > F (no room for that many orthogonal rows).
    """
    out = np.array(vectors, np.float64)
    if stop > out.shape[1]:
        raise ValueError(f"{stop} orthogonal components do not fit in {out.shape[1]} dims.")
    draws = np.asarray(jax.random.normal(key, (stop - start, out.shape[1])), np.float64)
    basis = np.linalg.qr(out[:start].T)[0] if start else np.zeros((out.shape[1], 0))
    for k in range(start, stop):
        v = draws[k - start] - basis @ (basis.T @ draws[k - start])
        v = v - basis @ (basis.T @ v)  # twice is enough (Kahan-Parlett re-orthogonalisation)
        out[k] = v / np.linalg.norm(v)
        basis = np.concatenate([basis, out[k][:, None]], axis=1)
    return out.astype(np.float32)


@dataclasses.dataclass(frozen=True, kw_only=True)
class CodaPrompt(ImageLearner):
    """CODA-Prompt (module docstring). Config block ``learner.coda_prompt``: ``pool_size``
    (M components per block, split evenly over the run's tasks), ``length`` (L, even),
    ``layers``, and the loop's ``epochs``, ``batch_size``, ``learning_rate`` (Adam).

    Raises: ValueError (at construction) for an odd length, layers outside the ViT, or fewer
    components than tasks.
    """

    name: ClassVar[str] = "coda_prompt"
    pool_size: int = 100
    length: int = 8
    layers: tuple = (0, 1, 2, 3, 4)
    epochs: int = 5
    batch_size: int = 16
    learning_rate: float = 1e-3

    def __post_init__(self):
        depth = getattr(self.model, "depth", None)
        if self.length % 2:
            raise ValueError(f"learner.coda_prompt.length must be even (key and value halves), "
                             f"got {self.length}.")
        if any(i < 0 or (depth is not None and i >= depth) for i in self.layers):
            raise ValueError(f"learner.coda_prompt.layers {tuple(self.layers)} must be blocks "
                             f"of the ViT (0..{depth - 1 if depth else '?'})")
        if self.num_tasks and self.pool_size < self.num_tasks:
            raise ValueError(f"learner.coda_prompt.pool_size={self.pool_size} gives no "
                             f"component to some of the run's {self.num_tasks} tasks.")

    @property
    def per_task(self) -> int:
        """``M_t``: components per task (``pool_size // num_tasks``; the whole pool when the
        number of tasks is not known)."""
        return self.pool_size // max(self.num_tasks, 1)

    def init(self, key, feature_dim: int) -> CodaPromptState:
        """Uniform [0, 1) components, keys and attention (the reference's ``tensor_prompt``)
        with task 0's block orthonormal; head as the reference's ``nn.Linear(D, C)``
        (``prompting.init_torch_linear_head``)."""
        kc, kk, ka, kh, korth = jax.random.split(key, 5)
        n, m = len(self.layers), self.pool_size
        params = {
            "components": jax.random.uniform(kc, (n, m, self.length, feature_dim)),
            "keys": jax.random.uniform(kk, (n, m, feature_dim)),
            "attention": jax.random.uniform(ka, (n, m, feature_dim)),
            **init_torch_linear_head(kh, feature_dim, self.num_classes)}
        return self._orthonormal(CodaPromptState(params, jnp.zeros((), jnp.int32),
                                                 seeds.raw_key(korth)))

    def _orthonormal(self, state: CodaPromptState) -> CodaPromptState:
        """Re-initialise the components, keys and attention of task ``state.task``."""
        t = int(state.task)
        start, stop = t * self.per_task, (t + 1) * self.per_task
        params = dict(state.params)
        for i, name in enumerate(("components", "keys", "attention")):
            arr = np.asarray(params[name])
            layers = []
            for l in range(arr.shape[0]):
                key = jax.random.fold_in(state.key, (t * 3 + i) * 1000 + l)
                flat = arr[l].reshape(arr.shape[1], -1)
                layers.append(orthonormal_block(flat, start, stop, key).reshape(arr.shape[1:]))
            params[name] = jnp.asarray(np.stack(layers))
        return state.replace(params=params)

    def optimizer(self, steps_per_epoch: int) -> optax.GradientTransformation:
        """Adam with the reference's per-epoch cosine: epoch e of E has learning rate
        ``learning_rate * cos(99 pi e / (200 (E - 1)))`` (constant when E = 1)."""
        period = 200 * max(self.epochs - 1, 1)
        return optax.adam(lambda step: self.learning_rate * jnp.cos(
            99 * jnp.pi * (step // steps_per_epoch) / period))

    def query(self, backbone, images: jax.Array) -> jax.Array:
        """float32[B, D] CLS features of the backbone without prompts (no gradient)."""
        cls = self.model.apply({"params": backbone}, self.preprocess(images), tokens="cls")
        return jax.lax.stop_gradient(cls)

    def prompts(self, params: dict, query: jax.Array, task: jax.Array, train: bool) -> jax.Array:
        """float32[len(layers), B, L, D]: ``p(x)`` per prompted block (paper Eq. 4-5) over
        components ``[0, (task + 1) M_t)`` (``train``, earlier tasks' frozen) or ``[0, task
        M_t)`` (test, after ``task`` tasks)."""
        m = params["keys"].shape[1]
        idx = jnp.arange(m)
        stop = (task + (1 if train else 0)) * self.per_task
        used = idx < stop
        old = idx < (task * self.per_task if train else m)
        frozen = lambda x: jnp.where(old.reshape((1, m) + (1,) * (x.ndim - 2)),
                                     jax.lax.stop_gradient(x), x)
        comps, keys, attn = (frozen(params[n]) for n in ("components", "keys", "attention"))
        aq = tf_normalize(jnp.einsum("bd,nkd->nbkd", query, attn))
        alpha = jnp.einsum("nbkd,nkd->nbk", aq, tf_normalize(keys))
        alpha = jnp.where(used, alpha, 0.0)
        return jnp.einsum("nbk,nkld->nbld", alpha, comps)

    def classify(self, params: dict, backbone, images: jax.Array, task: jax.Array,
                 train: bool) -> jax.Array:
        """float32[B, C]: the linear head on the CLS output with the CODA prefixes."""
        p = self.prompts(params, self.query(backbone, images), task, train)
        half = self.length // 2
        prefix = {i: (p[j, :, :half], p[j, :, half:]) for j, i in enumerate(self.layers)}
        cls = self.model.apply({"params": backbone}, self.preprocess(images),
                               ext=Extensions(prefix=prefix), tokens="cls")
        return cls @ params["kernel"] + params["bias"]

    def logits(self, state: CodaPromptState, backbone, images: jax.Array) -> jax.Array:
        """float32[B, C] with the components of the tasks trained so far."""
        return self.classify(state.params, backbone, images, state.task, train=False)

    def loss(self, params, state, backbone, images, labels, task_range) -> jax.Array:
        """Cross-entropy over the task's classes (other logits masked)."""
        logits = self.classify(params, backbone, images, state.task, train=True)
        return masked_cross_entropy(logits, labels, task_range)

    def end_task(self, state: CodaPromptState, task_range) -> CodaPromptState:
        """Count the task; the next task's components start orthonormal to all before."""
        del task_range
        state = state.replace(task=state.task + 1)
        if (int(state.task) + 1) * self.per_task > self.pool_size:
            return state  # no components left: the run has no further task
        return self._orthonormal(state)
