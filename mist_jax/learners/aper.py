"""APER: adapt once, then merge with the pre-trained model (Zhou et al., IJCV 2024, "Revisiting
class-incremental learning with pre-trained models: generalizability and adaptivity are all you
need", arXiv 2303.07338; first called ADAM).

On the first task only, a parameter-efficient module ``module`` is trained with a cosine
classifier (cross-entropy over the task's classes) on the frozen backbone:

* ``adapter``: AdaptFormer bottleneck adapters in every block (``adapter_dim`` = r, the
  reference's ``ffn_num``; scale ``adapter_scale``), the branch fed with the block's MLP input
  before LayerNorm, as the reference ``vit_adapter`` (``ffn_option="parallel"``, no adapter
  LayerNorm, scalar 0.1, dropout 0.1 after the ReLU while training: ``adapter_dropout``);
* ``ssf``: SSF scales and shifts at every site (Lian et al. 2022), scale ~ N(1, 0.02), shift ~
  N(0, 0.02) as the reference initialises them;
* ``vpt_shallow``: ``prompt_token_num`` prompt tokens after CLS (Jia et al. 2022), uniform in
  ``±sqrt(6 / (3 p^2 + D))`` as VPT initialises them (p the patch size);
* ``vpt_deep``: ``prompt_token_num`` tokens of its own for every block, appended before the
  block and dropped after it (the reference ``VPT_ViT`` with ``VPT_type="deep"``), same init;
* ``finetune``: every backbone weight (``aper_finetune.py``), stored as the difference
  ``delta`` from the backbone it was trained on (zero at init): the adapted model is
  ``backbone + delta``, and torch's coupled weight decay acts on the full weight
  ``backbone + delta``, as in the reference (a zero-valued loss term adds ``wd * backbone``
  to the gradient; the optimizer's own decay adds ``wd * delta``). Use a lower learning rate
  than the adapter's (reference ImageNet-R: 0.01 at batch 128, weight decay 5e-4, 5 epochs).

Then, on every task (paper Sec. 4, Eq. 6-7), the feature of an image is the concatenation
``[phi(x); phi_A(x)]`` of the backbone's CLS feature and the adapted model's, float32[2D]; the
prototype of a class is the mean concatenated feature of its training images (test transform),
set once when its task arrives (SimpleCIL on the merged model), and logits are cosines with the
prototypes (the reference's ``CosineLinear`` scale does not change the argmax).

Reference code followed: zhoudw-zdw/RevisitingCIL ``models/adam_{adapter,ssf,vpt}.py`` and
``exps/aper_*/imagenetr_5_5_vit-b_*.json``: SGD with momentum 0.9, cosine annealing of the
learning rate per epoch to ``min_lr`` 0, a cosine classifier with a learnable scale sigma
(weights uniform ±1/sqrt(D), sigma 1). ImageNet-R values: adapter lr 0.05, weight decay 0.005,
batch 24, r = 64; SSF and VPT-shallow lr 0.01, weight decay 5e-4, batch 48 (VPT: 5 tokens); 20
epochs. The defaults here are the adapter's, with the learning rate scaled linearly to batch 16
and 5 epochs: this library's choice for small streams, not a reference value. The reference's
VPT prompts start at zero and sit after the patches; here they start uniform as in the VPT
paper, and after CLS (shallow) or at the end (deep): the position does not change the CLS
output (attention is permutation-equivariant once position embeddings are added).

With MIST (``mist.enabled``), MIST tunes the backbone before the learner on every task; both
branches then read the current backbone (the pre-trained branch is MIST's tuned backbone, the
adapted branch that backbone plus the first task's module), as SimpleCIL reads it.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp
import optax
from flax import struct

from mist_jax.learners.images import ImageLearner, epoch_cosine
from mist_jax.mist.inner import torch_sgd
from mist_jax.learners.prompting import cosine_head_logits, init_cosine_head
from mist_jax.mist.objectives import masked_cross_entropy
from mist_jax.learners.simplecil import class_means, cosine_logits
from mist_jax.models.extensions import Extensions, check_dropout, init_adapters, init_ssf

MODULES = ("adapter", "ssf", "vpt_shallow", "vpt_deep", "finetune")


@struct.dataclass
class AperState:
    """``params`` (trained on the first task): ``{"module": adapters | SSF sites | prompts
    float32[P, D] | deep prompts float32[L, P, D] | a backbone-shaped delta, "head":
    {"weight": float32[C, D], "sigma": float32}}`` (``prompting.init_cosine_head``, over all
    C classes; only the first task's rows are used); ``prototypes``: float32[C, 2D],
    row c the mean merged feature of class c (zero until its task arrives)."""

    params: dict
    prototypes: jax.Array


@dataclasses.dataclass(frozen=True, kw_only=True)
class Aper(ImageLearner):
    """APER (module docstring). Config block ``learner.aper``: ``module`` (one of
    ``MODULES``), ``adapter_dim`` and ``adapter_scale`` (adapter), ``prompt_token_num``
    (VPT), the first task's ``epochs``, ``batch_size``, ``learning_rate``,
    ``weight_decay``, ``momentum`` and ``min_lr`` (SGD, cosine annealing per epoch)."""

    name: ClassVar[str] = "aper"
    embeds: ClassVar[bool] = True
    module: str = "adapter"  # adapter | ssf | vpt_shallow | vpt_deep | finetune
    adapter_dim: int = 64  # the reference's ffn_num
    adapter_scale: float = 0.1
    adapter_dropout: float = 0.1  # after the adapter's ReLU, training only (reference Adapter)
    prompt_token_num: int = 5  # VPT prompt tokens
    # The first task's loop: SGD with a per-epoch cosine (RevisitingCIL ``_init_train``).
    epochs: int = 5
    batch_size: int = 16
    learning_rate: float = 0.05 * 16 / 24
    weight_decay: float = 0.005
    momentum: float = 0.9
    min_lr: float = 0.0

    def __post_init__(self):
        if self.module not in MODULES:
            raise ValueError(f"learner.aper.module must be one of {MODULES}, got "
                             f"{self.module!r}.")
        check_dropout("learner.aper.adapter_dropout", self.adapter_dropout)

    @property
    def needs_key(self) -> bool:
        """The adapter module draws its dropout from a per-batch key."""
        return self.module == "adapter" and self.adapter_dropout > 0

    def train_epochs(self, task_range) -> int:
        """``epochs`` on the first task (classes from 0), none afterwards."""
        return self.epochs if task_range[0] == 0 else 0

    def optimizer(self, steps_per_epoch: int) -> optax.GradientTransformation:
        """torch SGD (momentum, coupled weight decay) with the learning rate annealed by a
        cosine from ``learning_rate`` to ``min_lr`` over ``epochs``, once per epoch (the
        reference's ``CosineAnnealingLR``)."""
        return torch_sgd(epoch_cosine(self.learning_rate, self.epochs, steps_per_epoch,
                                      self.min_lr), self.momentum, self.weight_decay)

    def init(self, key, feature_dim: int) -> AperState:
        """The module (adapter up-projections zero; SSF near identity; prompts uniform; the
        fine-tuning delta zero, float32 like every backbone weight), the cosine classifier
        (kernel uniform ±1/sqrt(D), sigma 1) and zero prototypes."""
        km, kh = jax.random.split(key)
        if self.module == "adapter":
            module = init_adapters(km, self.model, self.adapter_dim)
        elif self.module == "ssf":
            module = init_ssf(self.model, key=km)
        elif self.module == "finetune":
            shapes = jax.eval_shape(self.model.init, km, jnp.zeros(
                (1, self.model.image_size, self.model.image_size, 3), jnp.float32))["params"]
            module = jax.tree.map(lambda a: jnp.zeros(a.shape, jnp.float32), shapes)
        else:
            bound = (6.0 / (3 * self.model.patch_size ** 2 + feature_dim)) ** 0.5
            shape = (self.prompt_token_num, feature_dim)
            if self.module == "vpt_deep":
                shape = (self.model.depth,) + shape
            module = jax.random.uniform(km, shape, jnp.float32, -bound, bound)
        return AperState({"module": module,
                          "head": init_cosine_head(kh, feature_dim, self.num_classes)},
                         jnp.zeros((self.num_classes, 2 * feature_dim), jnp.float32))

    def _extensions(self, module, key=None) -> Extensions:
        if self.module == "adapter":
            return Extensions(adapters=module, adapter_mode="parallel_residual",
                              adapter_scale=self.adapter_scale,
                              adapter_dropout=self.adapter_dropout, dropout_key=key)
        if self.module == "ssf":
            return Extensions(ssf=module)
        if self.module == "vpt_deep":
            return Extensions(deep_prompts=module)
        return Extensions(prompts=module)

    def adapted(self, module, backbone, images: jax.Array, key=None) -> jax.Array:
        """float32[B, D]: CLS features of the backbone with the module (phi_A); ``key``: the
        adapter's training dropout (None: none)."""
        if self.module == "finetune":
            return self.model.apply({"params": jax.tree.map(jnp.add, backbone, module)},
                                    self.preprocess(images), tokens="cls")
        return self.model.apply({"params": backbone}, self.preprocess(images),
                                ext=self._extensions(module, key), tokens="cls")

    def loss(self, params, state, backbone, images, labels, task_range, key=None) -> jax.Array:
        """Cross-entropy of ``sigma * cos(phi_A(x), w_c)`` over the task's classes (with
        ``finetune``, plus the zero-valued term whose gradient is ``wd * backbone``); ``key``
        draws the adapter's dropout."""
        del state
        feats = self.adapted(params["module"], backbone, images, key)
        loss = masked_cross_entropy(cosine_head_logits(params["head"], feats), labels,
                                    task_range)
        if self.module == "finetune":
            dot = sum(jnp.vdot(jax.lax.stop_gradient(w), d) for w, d in
                      zip(jax.tree.leaves(backbone), jax.tree.leaves(params["module"])))
            loss = loss + self.weight_decay * (dot - jax.lax.stop_gradient(dot))
        return loss

    def embed(self, state: AperState, backbone, images: jax.Array) -> jax.Array:
        """float32[B, 2D]: ``[phi(x); phi_A(x)]`` (paper Eq. 6)."""
        plain = self.model.apply({"params": backbone}, self.preprocess(images), tokens="cls")
        return jnp.concatenate([plain, self.adapted(state.params["module"], backbone, images)],
                               axis=-1)

    def fit_features(self, state: AperState, features, labels, task_range) -> AperState:
        """Set the prototypes of classes [start, end) to their mean merged feature (Eq. 7).

        Raises: ValueError if a task class has no training image.
        """
        start, end = task_range
        means = class_means(jnp.asarray(features, jnp.float32), jnp.asarray(labels), start,
                            end - start)
        if not bool(jnp.all(jnp.isfinite(means))):
            raise ValueError(f"APER: a class of task {task_range} has no training image.")
        return state.replace(prototypes=jnp.asarray(state.prototypes).at[start:end].set(means))

    def logits(self, state: AperState, backbone, images: jax.Array) -> jax.Array:
        """float32[B, C]: cosine of the merged feature with every class prototype (classes
        not yet seen have zero prototypes, cosine 0; the runner keeps the seen columns)."""
        return cosine_logits(self.embed(state, backbone, images), state.prototypes)
