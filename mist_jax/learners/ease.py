"""EASE: Expandable Subspace Ensemble for pre-trained model-based class-incremental learning
(Zhou, Sun, Ye, Zhan, CVPR 2024, arXiv 2403.12030).

Each task t trains a new lightweight adapter ``A_t`` (one AdaptFormer bottleneck per block, all
blocks) on the frozen backbone; ``phi_t(x)`` is the CLS feature with ``A_t`` (a
``D``-dimensional "subspace"). Task t trains ``A_t`` and a cosine head over its own classes
only (the reference ``proxy_fc`` and ``_init_train``):

    L_t = CE(sigma * cos(phi_t(x), w_y), y)   over the classes of task t

and afterwards keeps ``A_t`` frozen. Prototypes ``P[c, j] = mean_{x in c} phi_j(x)``
(reference ``replace_fc``) are measured for the new classes in every subspace j <= t. An old
class c of task i < j has no data in subspace j; the paper's semantic-guided prototype
complement builds it from the classes ``k`` that were learned in or after subspace j (tasks
>= j, measured in both subspaces i and j):

    Sim[c, k] = softmax_k cos(P[c, i], P[k, i]),   P[c, j] = sum_k Sim[c, k] P[k, j].

Inference (the paper's subspace reweighting; reference ``CosineLinear.forward_reweight``):
with T tasks done and class c from task i,

    logit[x, c] = sum_j w_ij cos(phi_j(x), P[c, j]),
    w_ij = 1 (j = i), alpha / (T - 1) (j != i, adapter subspaces j < T), beta (PTM subspace).

Reference code followed: sun-hailong/CVPR24-Ease (``models/ease.py``, ``utils/inc_net.py``
``EaseNet``, ``backbone/vit_ease.py``, ``backbone/linears.py``) as stored in its fork
tf63/CVPR24-Ease: the adapter (``ffn_option="parallel"`` on the block stream after attention,
no LayerNorm, ``ffn_adapter_scalar=0.1``, ``lora`` init = ``extensions.init_adapters``, a fresh
adapter per task), the ``proxy_fc`` head (``CosineLinear``: weight uniform(+-1/sqrt(D)),
learnable scale sigma = 1 at init), SGD with momentum 0.9 and weight decay on the adapter and
head with a per-epoch cosine learning rate down to 0 (``images.epoch_cosine``),
``recalc_sim=True`` (``solve_sim_reset``: the complement of every old class in every later
subspace is recomputed after each task from all classes of tasks >= j seen so far; ``Sim`` is a
softmax of plain cosines, no temperature), ``use_reweight=True``, and ``use_init_ptm`` (the
adapter-free backbone as an extra first subspace, measured for every class, weighted by beta).
The inference scale ``fc.sigma`` stays 1 in the reference (only ``proxy_fc`` trains) and is
dropped.

Defaults: ``exps/ease_inr_in21k.json`` (ImageNet-R, ViT-B/16-IN21k): ``ffn_num`` 64,
``init_lr`` 0.05, batch 16, weight decay 0.005, alpha 0.1, ``use_init_ptm`` false, beta 0
(``ease_cub.json`` uses alpha 0.005, ``use_init_ptm`` true, beta 1). The 3 epochs are this
library's choice for small streams, so that a run with MIST on the embedded default fits 15
minutes on a 2-core CPU (the reference trains 20).

Dropout 0.1 after the adapter's ReLU while training (``adapter_dropout``, the reference
``Adapter``), drawn from a per-batch key. Deviation: the training head is a ``[C, D]``
cosine head whose logits outside the task's classes are masked (the reference's ``proxy_fc`` has only the task's rows:
the same loss and gradients). ``use_diagonal``, ``use_old_data`` and ``moni_adam`` (reference
ablations) are not implemented.

With MIST (``mist.enabled``, run by the runner): MIST tunes the backbone before each task, then
EASE trains the task's new adapter on the tuned, frozen backbone. Features of all subspaces (for
the new prototypes and at test time) use the current backbone; the prototypes of earlier
classes are not re-measured (their data is gone), as in the reference.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from mist_jax.learners.base import check_task
from mist_jax.learners.images import ImageLearner, epoch_cosine
from mist_jax.learners.prompting import cosine_head_logits, init_cosine_head
from mist_jax.learners.simplecil import class_means
from mist_jax.learners.subspaces import complement_prototypes, reweighted_logits, unstack_adapter
from mist_jax.mist.inner import torch_sgd
from mist_jax.mist.objectives import masked_cross_entropy
from mist_jax.models.extensions import Extensions, check_dropout, init_adapters


@struct.dataclass
class EaseState:
    """EASE's state (``T`` = the run's ``num_tasks``, ``L`` blocks, ``D`` width, ``r`` the
    bottleneck, ``C`` classes, ``S = T (+ 1 with use_init_ptm)`` subspaces).

    ``params`` (trained, the current task's): ``{"adapter": {"down": {"kernel" float32[L, D,
    r], "bias" [L, r]}, "up": {"kernel" [L, r, D], "bias" [L, D]}}, "head": {"weight"
    float32[C, D], "sigma" float32[]}}``. ``adapters``: the frozen adapters of finished tasks,
    each leaf of ``params["adapter"]`` with a leading axis T (slot t = task t; zeros until
    stored). ``prototypes``: float32[C, S, D]. ``class_task``: int32[C], the task of each seen
    class (-1: not seen yet). ``num_done``: int32[], adapters stored. ``key``: uint32 raw PRNG
    key of the per-task initialisation.
    """

    params: dict
    adapters: dict
    prototypes: jax.Array
    class_task: jax.Array
    num_done: jax.Array
    key: jax.Array


@dataclasses.dataclass(frozen=True, kw_only=True)
class Ease(ImageLearner):
    """EASE (module docstring). Config block ``learner.ease``: ``adapter_dim`` (r, the
    reference ``ffn_num``), ``adapter_scale`` (``ffn_adapter_scalar``), ``alpha`` and ``beta``
    (inference reweighting), ``use_init_ptm``, ``weight_decay`` and ``momentum`` of the SGD
    optimizer, and the loop's ``epochs``, ``batch_size``, ``learning_rate``."""

    name: ClassVar[str] = "ease"
    embeds: ClassVar[bool] = True
    adapter_dim: int = 64  # r, the reference's ffn_num
    adapter_scale: float = 0.1  # ffn_adapter_scalar
    adapter_dropout: float = 0.1  # after the adapter's ReLU, training only (reference Adapter)
    alpha: float = 0.1  # inference reweighting of the other subspaces
    beta: float = 0.0
    use_init_ptm: bool = False  # also keep the pre-trained model's subspace
    # The loop: SGD with a per-epoch cosine (reference ``_train``).
    epochs: int = 3
    batch_size: int = 16
    learning_rate: float = 0.05
    weight_decay: float = 0.005
    momentum: float = 0.9

    def __post_init__(self):
        if self.adapter_dim < 1:
            raise ValueError(f"learner.ease.adapter_dim must be >= 1 (the reference's 64), got "
                             f"{self.adapter_dim}.")
        for key in ("alpha", "beta", "weight_decay", "momentum"):
            if getattr(self, key) < 0:
                raise ValueError(f"learner.ease.{key} must be >= 0, got {getattr(self, key)}.")
        if self.learning_rate <= 0:
            raise ValueError(f"learner.ease.learning_rate must be > 0, got "
                             f"{self.learning_rate}.")
        check_dropout("learner.ease.adapter_dropout", self.adapter_dropout)

    @property
    def needs_key(self) -> bool:
        """The task's adapter draws its dropout from a per-batch key."""
        return self.adapter_dropout > 0

    @property
    def num_subspaces(self) -> int:
        """S: one per task, plus the adapter-free backbone with ``use_init_ptm``."""
        return self.num_tasks + int(self.use_init_ptm)

    def optimizer(self, steps_per_epoch: int) -> optax.GradientTransformation:
        """PyTorch ``SGD(lr, momentum, weight_decay)`` (reference ``get_optimizer("sgd")``)
        with the per-epoch cosine to 0 (``images.epoch_cosine``)."""
        return torch_sgd(epoch_cosine(self.learning_rate, self.epochs, steps_per_epoch),
                         self.momentum, self.weight_decay)

    def fresh_params(self, raw_key: jax.Array, task: int | jax.Array) -> dict:
        """Task ``task``'s initial params from ``fold_in(raw_key, task)``: a zero-output
        adapter (``init_adapters``) and the ``CosineLinear`` head (weight uniform(+-1/sqrt(D)),
        sigma 1)."""
        ka, kh = jax.random.split(jax.random.fold_in(jax.random.wrap_key_data(raw_key), task))
        blocks = init_adapters(ka, self.model, self.adapter_dim)
        adapter = jax.tree.map(lambda *a: jnp.stack(a), *[blocks[i] for i in sorted(blocks)])
        return {"adapter": adapter,
                "head": init_cosine_head(kh, self.model.width, self.num_classes)}

    def init(self, key, feature_dim: int) -> EaseState:
        """Task 0's params, empty adapter slots and prototypes.

        Raises:
          ValueError: without the run's ``num_tasks`` / ``num_classes`` (EASE preallocates one
            adapter and subspace per task), or ``feature_dim`` != the model's width.
        """
        if self.num_tasks < 1 or self.num_classes < 1:
            raise ValueError("EASE needs the run's num_tasks and num_classes (build it with "
                             "learners.get_learner('ease', num_tasks=..., num_classes=..., "
                             "model=..., preprocess=...)).")
        if feature_dim != self.model.width:
            raise ValueError(f"feature_dim {feature_dim} != the model's width {self.model.width}.")
        raw = jax.random.key_data(key)
        params = self.fresh_params(raw, 0)
        slots = jax.tree.map(lambda a: jnp.zeros((self.num_tasks,) + a.shape, a.dtype),
                             params["adapter"])
        return EaseState(
            params=params, adapters=slots,
            prototypes=jnp.zeros((self.num_classes, self.num_subspaces, feature_dim), jnp.float32),
            class_task=jnp.full((self.num_classes,), -1, jnp.int32),
            num_done=jnp.zeros((), jnp.int32), key=raw)

    def cls(self, backbone, x: jax.Array, adapter: dict | None, key=None) -> jax.Array:
        """float32[N, D] CLS features of preprocessed images x with one stacked ``adapter``
        (``params["adapter"]`` layout; ``None``: the backbone alone); ``key``: the adapter's
        training dropout (None: none)."""
        ext = None if adapter is None else Extensions(
            adapters=unstack_adapter(adapter, self.model.depth), adapter_mode="parallel_residual",
            adapter_scale=self.adapter_scale, adapter_dropout=self.adapter_dropout,
            dropout_key=key)
        return self.model.apply({"params": backbone}, x, ext=ext, tokens="cls")

    def loss(self, params, state, backbone, images, labels, task_range, key=None) -> jax.Array:
        """Cross-entropy of ``sigma * cos(phi_t(x), w)`` over the task's classes
        (the reference ``proxy_fc``), with the task's adapter only (``key``: its dropout)."""
        del state
        feats = self.cls(backbone, self.preprocess(images), params["adapter"], key)
        return masked_cross_entropy(cosine_head_logits(params["head"], feats), labels, task_range)

    def subspace_features(self, state: EaseState, backbone, images: jax.Array) -> jax.Array:
        """float32[N, S, D]: the CLS feature with each stored adapter (zeros for the slots
        >= ``num_done``, not computed), after the adapter-free one with ``use_init_ptm``
        (reference ``forward_test``)."""
        x = self.preprocess(images)
        zeros = jnp.zeros((x.shape[0], self.model.width), jnp.float32)

        def one(t):
            adapter = jax.tree.map(lambda a: jnp.asarray(a)[t], state.adapters)
            return jax.lax.cond(t < state.num_done, lambda: self.cls(backbone, x, adapter),
                                lambda: zeros)

        feats = jax.lax.map(one, jnp.arange(self.num_tasks))  # [T, N, D]
        if self.use_init_ptm:
            feats = jnp.concatenate([self.cls(backbone, x, None)[None], feats])
        return jnp.swapaxes(feats, 0, 1)

    def embed(self, state: EaseState, backbone, images: jax.Array) -> jax.Array:
        """float32[N, S * D]: the subspace features concatenated (reference ``forward(x,
        test=True)``), for the prototypes in ``fit_features``."""
        feats = self.subspace_features(state, backbone, images)
        return feats.reshape(feats.shape[0], -1)

    def logits(self, state: EaseState, backbone, images: jax.Array) -> jax.Array:
        """float32[N, C]: ``reweighted_logits`` of the subspace features (reference
        ``EaseNet.forward(x, test=True)``)."""
        return reweighted_logits(self.subspace_features(state, backbone, images),
                                 state.prototypes, state.class_task, state.num_done,
                                 self.alpha, self.beta, self.use_init_ptm)

    def end_task(self, state: EaseState, task_range: tuple[int, int]) -> EaseState:
        """Store the trained adapter in slot ``num_done`` (reference ``add_adapter_to_list``)
        and start the next task's params (``fresh_params``).

        Raises:
          ValueError: more tasks than the run's ``num_tasks``.
        """
        del task_range
        t = int(state.num_done)
        if t >= self.num_tasks:
            raise ValueError(f"EASE was built for {self.num_tasks} tasks; got task {t}.")
        adapters = jax.tree.map(lambda slots, a: jnp.asarray(slots).at[t].set(a),
                                state.adapters, state.params["adapter"])
        return state.replace(params=self.fresh_params(state.key, t + 1), adapters=adapters,
                             num_done=jnp.asarray(t + 1, jnp.int32))

    def fit_features(self, state: EaseState, features, labels,
                     task_range: tuple[int, int]) -> EaseState:
        """Measure the task's prototypes in every subspace (reference ``replace_fc``) from
        ``embed``'s float32[N, S * D], then complement the old classes
        (``complement_prototypes``) in the adapter subspaces.

        Raises:
          ValueError: see ``base.check_task`` (every task class needs a sample).
        """
        num_seen = int(np.sum(np.asarray(state.class_task) >= 0))
        s, d = self.num_subspaces, self.model.width
        features, labels = check_task(features, labels, task_range, num_seen, s * d)
        start, end = task_range
        means = class_means(jnp.asarray(features), jnp.asarray(labels), start, end - start)
        prototypes = jnp.asarray(state.prototypes).at[start:end].set(
            means.reshape(end - start, s, d))
        class_task = jnp.asarray(state.class_task).at[start:end].set(state.num_done - 1)
        offset = int(self.use_init_ptm)
        adapted = _complement(prototypes[:, offset:], class_task, state.num_done)
        return state.replace(prototypes=prototypes.at[:, offset:].set(adapted),
                             class_task=class_task)


_complement = jax.jit(complement_prototypes)
