"""SLCA: Slow Learner with Classifier Alignment (Zhang et al., ICCV 2023, arXiv 2303.05118).

**Slow learner (SL).** On every task the whole backbone ``theta`` and a linear head ``psi``
(``h(x) = f_theta(x) psi + b``, ``f`` = CLS feature) are trained densely with SGD on the
cross-entropy of the task's own classes (the reference's ``logits[:, known_classes:]``, here
``masked_cross_entropy``), the backbone at ``learning_rate * bcb_lrscale`` (paper: 1e-4 vs
1e-2 for the head, "slow" representation learning), momentum and coupled weight decay for both
(torch ``optim.SGD(momentum=0.9, weight_decay=5e-4)``), both rates multiplied by ``lr_decay``
at each epoch of ``milestones`` (``MultiStepLR``). Older tasks' head columns are frozen during
the task (the reference freezes old per-task heads: no gradient, no weight decay).

**Classifier alignment (CA).** After the task, with the trained backbone, each class c of the
task gets (test transform, reference ``_compute_class_mean``)

    mu_c = mean_i f(x_i),   Sigma_c = cov(f(x_i)) + cov_reg * I

(``torch.cov``: unbiased, ddof=1; ``cov_reg = 1e-4``). From the second task on, the head of all
seen classes is re-trained for ``ca_epochs`` on features sampled anew every epoch,
``num_sampled_pcls`` per class, ``h ~ N(s_c * mu_c, Sigma_c)`` (reference
``_stage2_compact_classifier``), in ``num_seen`` shuffled batches of ``num_sampled_pcls``,
with SGD(lr, momentum 0.9, weight decay 5e-4) and a per-epoch cosine schedule
``lr_e = lr (1 + cos(pi e / ca_epochs)) / 2``, on the logit-normalised cross-entropy

    CE(z / (tau * mean_k(||z_{task k}||_2 + 1e-7)), y),   tau = ca_with_logit_norm

(z = logits of the seen classes; 0 disables it: plain CE).

Reference code followed: GengDavid/SLCA ``models/slca.py``, ``models/base.py``
(``_compute_class_mean``), ``convs/linears.py`` (``SimpleContinualLinear``: trunc-normal std
0.02 heads, zero bias) and ``exps/slca/slca_{cifar,cub,imgnetr}.json``; LAMDA-PILOT's
``models/slca.py`` is the same algorithm. Where code and paper differ the code is followed:

* logit normalisation divides by the mean of per-task logit norms (code), not by the norm of
  all logits (paper; the code computes that norm, ``norms_all``, and leaves it unused);
* CA samples old classes around a shrunk mean, ``s_c = 0.9 + 0.1 (t_c + 1) / T`` (t_c: the
  class's task index from 0, T: tasks seen; the current task's classes keep ``s_c = 1``), which
  the paper does not mention;
* the aligned head is only used for prediction: the reference backs the head up before CA and
  restores it after evaluation (``fc.backup()`` / ``fc.recall()``), so each CA starts from the
  slow-learner heads. ``SlcaState.params["head"]`` is that head, ``SlcaState.aligned`` the CA
  one.

The reference's backbone (``convs/vits.py``: ``del model.norm; model.norm =
nn.LayerNorm(768)``) replaces the pre-trained final LayerNorm with a fresh one (scale 1, shift
0), trained with the backbone at the slow rate; so here ``f`` is the CLS token through SLCA's
own final norm ``params["norm"]`` (the pre-trained ``encoder_norm`` is unused by SLCA and left
as it is). This matters: the features then have norm ~sqrt(D) (19.6 for ViT-S) instead of the
pre-trained norm's (39.6 for the embedded DINOv2 ViT-S/14 at 56 px), and at the reference's head
rate of 0.01 the larger features made the slow learner diverge on its first task (epoch-mean
loss 4.6 for 5 classes, task-0 accuracy 53.8% vs 70.6% with the fresh norm; one seed).
LAMDA-PILOT's port (``models/slca.py`` on timm's ``vit_base_patch16_224``) keeps the
pre-trained norm and trains it with the backbone: ``fresh_norm=False`` (``params["norm"]`` is
then unused and left as it is).

Deviations: the LayerNorm epsilon is the model's (1e-6) rather than torch's default 1e-5; the
reference's ``t_c = c // task_size`` assumes equal tasks; here t_c is the
task that taught class c. Weight decay of the slow learner is the gradient of a zero-valued
term ``0.5 wd (||w||^2 - stopgrad(||w||^2))`` in the loss (torch's coupled decay, restricted
to the backbone and the task's head columns; the logged loss stays the cross-entropy). The
head is drawn for all classes at ``init`` (``prompting.init_head``: truncated at 2 std; timm's
``trunc_normal_(std=.02)`` truncates at +-2, i.e. barely).

Defaults: reference values for ``learning_rate`` 0.01 (code ``lrate``), ``bcb_lrscale``
1/100, ``momentum`` 0.9, ``weight_decay`` 5e-4, ``ca_epochs`` 5, ``ca_with_logit_norm`` 0.1
(slca_cifar.json; LAMDA-PILOT exps/slca.json uses 3 CA epochs), ``num_sampled_pcls`` 256 and
``cov_reg`` 1e-4 (code), ``lr_decay`` 0.1 (code ``lrate_decay``). ``epochs`` 3 at
``batch_size`` 16 and ``milestones`` (2,) are this library's small-stream choice (so that a run
with MIST on the embedded default fits 15 minutes on a 2-core CPU; the decay over the last
epoch, as the reference's 18 of 20 epochs on CIFAR, 40 of 50 on CUB / ImageNet-R), not the
reference's 20-50 epochs at batch 128 (GengDavid/SLCA; LAMDA-PILOT: 64);
the learning rate is not rescaled with the batch (the reference shares it with CA).

With MIST (``mist.enabled``): the runner runs MIST before the learner on every task, so MIST
sparse-tunes the backbone first and SLCA's slow learner then trains the whole backbone densely
at its slow rate; its statistics and CA use that backbone (the paper applies MIST before each
learner). The other reading (MIST's selection restricting which backbone weights the slow
learner may update) is not built: it needs each task's mask handed from the tuner to the learner
and kept in its checkpointed state (a boolean per backbone weight); in ``loss``,
``where(mask, w, stop_gradient(w))`` would then confine both the gradient and the decay term.
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
from mist_jax.learners.alignment import align_classifier, class_statistics
from mist_jax.learners.base import check_task
from mist_jax.learners.images import ImageLearner
from mist_jax.learners.prompting import init_linear_head
from mist_jax.mist.objectives import masked_cross_entropy



@struct.dataclass
class SlcaState:
    """``params``: ``{"head": {"kernel": float32[D, C], "bias": float32[C]}, "norm":
    {"scale": float32[D], "bias": float32[D]}}``, the slow learner's head and SLCA's own final
    LayerNorm (both trained with the backbone; the norm at the backbone's rate); ``aligned``:
    the head after classifier alignment (used by ``logits``); ``means`` float32[C, D] and
    ``covs`` float32[C, D, D]: class statistics (rows of unseen classes zero);
    ``task_of_class`` int32[C]: the task that taught each class (-1: unseen); ``key``
    uint32[2]: raw PRNG key of the CA sampling."""

    params: dict
    aligned: dict
    means: jax.Array
    covs: jax.Array
    task_of_class: jax.Array
    key: jax.Array


@dataclasses.dataclass(frozen=True, kw_only=True)
class Slca(ImageLearner):
    """SLCA (module docstring). Config block ``learner.slca``: ``learning_rate`` (head; CA),
    ``bcb_lrscale`` (backbone rate = learning_rate * bcb_lrscale; 0 freezes it),
    ``milestones`` (epochs from which the rates are multiplied by one more ``lr_decay``),
    ``momentum``, ``weight_decay``, ``ca_epochs`` (0: no alignment), ``ca_with_logit_norm``
    (tau; 0: plain CE), ``num_sampled_pcls``, ``cov_reg``, ``fresh_norm`` (True: GengDavid/SLCA's
    fresh final LayerNorm; False: LAMDA-PILOT's pre-trained one), and the loop's ``epochs``,
    ``batch_size``."""

    name: ClassVar[str] = "slca"
    trains_backbone: ClassVar[bool] = True
    embeds: ClassVar[bool] = True
    epochs: int = 3
    batch_size: int = 16
    learning_rate: float = 0.01
    bcb_lrscale: float = 0.01
    milestones: tuple[int, ...] = (2,)
    lr_decay: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    ca_epochs: int = 5
    ca_with_logit_norm: float = 0.1
    num_sampled_pcls: int = 256
    cov_reg: float = 1e-4
    fresh_norm: bool = True

    def __post_init__(self):
        object.__setattr__(self, "milestones", tuple(self.milestones))  # hashable (a list)
        checks = {
            "learning_rate": (self.learning_rate > 0, "a positive number (reference: 0.01)"),
            "bcb_lrscale": (self.bcb_lrscale >= 0, ">= 0 (reference: 0.01; 0 freezes it)"),
            "milestones": (all(a < b for a, b in zip((0, *self.milestones), self.milestones)),
                           "strictly increasing positive epochs (reference: [18] of 20)"),
            "lr_decay": (self.lr_decay > 0, "a positive factor (reference: 0.1)"),
            "momentum": (0 <= self.momentum < 1, "in [0, 1) (reference: 0.9)"),
            "weight_decay": (self.weight_decay >= 0, ">= 0 (reference: 5e-4)"),
            "ca_epochs": (self.ca_epochs >= 0, ">= 0 (reference: 5; 0 skips alignment)"),
            "ca_with_logit_norm": (self.ca_with_logit_norm >= 0, ">= 0 (reference: 0.1)"),
            "num_sampled_pcls": (self.num_sampled_pcls >= 1, ">= 1 (reference: 256)"),
            "cov_reg": (self.cov_reg >= 0, ">= 0 (reference: 1e-4)"),
        }
        for key, (ok, fix) in checks.items():
            if not ok:
                raise ValueError(f"learner.slca.{key} must be {fix}, got {getattr(self, key)}.")

    def init(self, key, feature_dim: int) -> SlcaState:
        """Head trunc-normal (std 0.02) with zero bias; a fresh final LayerNorm (scale 1,
        shift 0: reference ``nn.LayerNorm(768)``); empty statistics. Memory: the covariances
        take C * D * D float32."""
        key = seeds.raw_key(key)
        head_key, key = jax.random.split(key)
        head = init_linear_head(head_key, feature_dim, self.num_classes)
        c, d = self.num_classes, feature_dim
        norm = {"scale": jnp.ones((d,), jnp.float32), "bias": jnp.zeros((d,), jnp.float32)}
        return SlcaState(params={"head": head, "norm": norm}, aligned=head,
                         means=jnp.zeros((c, d), jnp.float32),
                         covs=jnp.zeros((c, d, d), jnp.float32),
                         task_of_class=jnp.full((c,), -1, jnp.int32), key=key)

    def optimizer(self, steps_per_epoch: int) -> optax.GradientTransformation:
        """SGD with momentum on ``{"params": {"head", "norm"}, "backbone": ViT params}``: the
        head at ``learning_rate``, the backbone and SLCA's norm at ``learning_rate *
        bcb_lrscale``, both times
        ``lr_decay`` from each milestone epoch on (``steps_per_epoch`` batches per epoch;
        weight decay is in ``loss``)."""
        decay = {m * steps_per_epoch: self.lr_decay for m in self.milestones}
        sgd = lambda lr: optax.sgd(optax.piecewise_constant_schedule(lr, decay),
                                   momentum=self.momentum)
        label = lambda tree: {
            "params": {"head": jax.tree.map(lambda _: "params", tree["params"]["head"]),
                       "norm": jax.tree.map(lambda _: "backbone", tree["params"]["norm"])},
            "backbone": jax.tree.map(lambda _: "backbone", tree["backbone"])}
        return optax.multi_transform(
            {"params": sgd(self.learning_rate),
             "backbone": sgd(self.learning_rate * self.bcb_lrscale)}, label)

    def embed(self, state: SlcaState, backbone, images: jax.Array) -> jax.Array:
        """float32[N, D] CLS features of images float32[N, S, S, 3] (not yet preprocessed),
        through SLCA's final norm ``state.params["norm"]`` (``fresh_norm``) or the backbone's."""
        return self._features(state.params, backbone, images)

    def _features(self, params: dict, backbone, images: jax.Array) -> jax.Array:
        """The backbone's CLS token, with ``params["norm"]`` in place of its ``encoder_norm``
        when ``fresh_norm``."""
        if self.fresh_norm:
            backbone = {**backbone, "encoder_norm": params["norm"]}
        return self.model.apply({"params": backbone}, self.preprocess(images), tokens="cls")

    def logits(self, state: SlcaState, backbone, images: jax.Array) -> jax.Array:
        """float32[N, C]: CLS feature @ aligned kernel + bias."""
        head = state.aligned
        return self.embed(state, backbone, images) @ head["kernel"] + head["bias"]

    def loss(self, params, state, backbone, images, labels, task_range) -> jax.Array:
        """Slow-learner loss: cross-entropy over the task's classes (reference ``_run``) plus
        the zero-valued weight-decay term of the backbone, the final norm in use (SLCA's or,
        without ``fresh_norm``, the backbone's) and the task's head columns."""
        head = params["head"]
        logits = self._features(params, backbone, images) @ head["kernel"] + head["bias"]
        classes = jnp.arange(logits.shape[-1])
        in_task = ((classes >= task_range[0]) & (classes < task_range[1])).astype(jnp.float32)
        task_head = {"kernel": head["kernel"] * in_task, "bias": head["bias"] * in_task}
        used = ({**backbone, "encoder_norm": params["norm"]} if self.fresh_norm else backbone)
        return (masked_cross_entropy(logits, labels, task_range)
                + decay_term((used, task_head), self.weight_decay))

    def fit_features(self, state: SlcaState, features, labels, task_range) -> SlcaState:
        """Store the statistics of the task's classes, then (from the second task on, when
        ``ca_epochs`` > 0) align the head of all seen classes on sampled features.

        Args: features float32[N, D] (``embed`` of the task's training images with the trained
        backbone), labels int[N] in ``task_range`` = (start, end).
        Raises:
          ValueError: see ``base.check_task``; a task class with fewer than 2 images (no
            covariance); a non-finite aligned head.
        """
        state = jax.tree.map(jnp.asarray, state)  # a restored checkpoint holds NumPy arrays
        num_seen = int(np.sum(np.asarray(state.task_of_class) >= 0))
        features, labels = check_task(features, labels, task_range, num_seen,
                                      state.means.shape[1])
        start, end = task_range
        counts = np.bincount(labels - start, minlength=end - start)
        if counts.min() < 2:
            raise ValueError(f"SLCA needs >= 2 training images per class for a covariance; "
                             f"class {start + int(counts.argmin())} has {counts.min()}.")
        task = int(np.max(np.asarray(state.task_of_class))) + 1
        means, covs = class_statistics(jnp.asarray(features), jnp.asarray(labels, jnp.int32),
                                       start, end - start, self.cov_reg)
        key, ca_key = jax.random.split(state.key)
        state = state.replace(means=state.means.at[start:end].set(means),
                              covs=state.covs.at[start:end].set(covs),
                              task_of_class=state.task_of_class.at[start:end].set(task), key=key)
        if task == 0 or self.ca_epochs == 0:
            return state.replace(aligned=state.params["head"])
        aligned = align_classifier(
            state.params["head"], state.means, state.covs, state.task_of_class, ca_key,
            num_seen=end, num_tasks=task + 1, epochs=self.ca_epochs,
            samples=self.num_sampled_pcls, learning_rate=self.learning_rate,
            momentum=self.momentum, weight_decay=self.weight_decay, tau=self.ca_with_logit_norm)
        if not all(bool(jnp.isfinite(x).all()) for x in jax.tree.leaves(aligned)):
            raise ValueError("SLCA classifier alignment diverged (non-finite head); raise "
                             "learner.slca.cov_reg or lower learner.slca.learning_rate.")
        return state.replace(aligned=aligned)


def decay_term(tree, weight_decay: float) -> jax.Array:
    """``0.5 wd (||w||^2 - stopgrad(||w||^2))`` over the leaves of ``tree``: float32 zero whose
    gradient is ``wd * w`` (torch SGD's coupled weight decay, added to the loss gradient)."""
    sq = sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(tree))
    return 0.5 * weight_decay * (sq - jax.lax.stop_gradient(sq))
