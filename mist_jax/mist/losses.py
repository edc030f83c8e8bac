"""MIST's training loss on a ViT and its projection head (docs/algorithm.md §2-3): the two
views go through the backbone and the head, and the MI objective (or an ablation's) is taken on
the L2-normalised projections."""

from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mist_jax.mist import augment, objectives
from mist_jax.models.normalize import l2_normalize

PyTree = Any


def make_view_loss_fn(model: nn.Module, preprocess: Callable, objective: str = "mi",
                      temperature: float = 0.07, out_dim: int = 128) -> Callable:
    """The MI loss on given views: ``loss(params, (views, labels)) -> float32 scalar``.

    ``params = {"backbone": ViT params, "head": Dense(out_dim) params}``; ``views`` float32
    [2B, S, S, 3] is [x; x2] (the batch, then its second views, as the official
    ``torch.cat((inputs, simclr_aug(inputs)))``), ``labels`` int32[B]. The views go through
    ``preprocess``, the backbone and the projection head; ``mi``/``supcon`` take the
    L2-normalised projections (docs/algorithm.md §2, code ``Supervised_NT_xent_n``), ``ce`` takes the
    head's output as logits over ``out_dim`` classes. Used directly where the views are given
    (golden parity tests); ``make_loss_fn`` draws them.
    """
    head = nn.Dense(out_dim)
    loss = objectives.get_objective(objective)

    def loss_fn(params, batch):
        views, labels = batch
        feats = model.apply({"params": params["backbone"]}, preprocess(views))
        out = head.apply({"params": params["head"]}, feats)
        if objective == "ce":
            return loss(out, jnp.concatenate([labels, labels]))
        return loss(l2_normalize(out, convention="mist"), labels, temperature)

    return loss_fn


def make_loss_fn(model: nn.Module, preprocess: Callable, objective: str = "mi",
                 temperature: float = 0.07, out_dim: int = 128) -> Callable:
    """The MI training loss ``loss(params, batch) -> float32 scalar`` (docs/algorithm.md §2).

    ``batch = (images float32[B, S, S, 3], labels int32[B], key)``: the second views are drawn
    from ``key`` (``augment.two_views``), then ``make_view_loss_fn``'s loss is applied.
    """
    on_views = make_view_loss_fn(model, preprocess, objective, temperature, out_dim)

    def loss_fn(params, batch):
        images, labels, key = batch
        return on_views(params, (augment.two_views(key, images), labels))

    return loss_fn


def init_head(key: jax.Array, feature_dim: int, out_dim: int) -> PyTree:
    """Projection head Dense(out_dim) params, kept across tasks (code ``SimpleVitNet.simclr``).

    PyTorch ``nn.Linear``'s default init, as the official head: kernel float32[feature_dim,
    out_dim] and bias float32[out_dim], both uniform in +-1/sqrt(feature_dim).
    """
    bound = 1.0 / np.sqrt(feature_dim)
    kernel_init = nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")  # +-1/sqrt(in)
    bias_init = lambda k, shape, dtype=jnp.float32: jax.random.uniform(k, shape, dtype, -bound,
                                                                       bound)
    dense = nn.Dense(out_dim, kernel_init=kernel_init, bias_init=bias_init)
    return dense.init(key, jnp.zeros((1, feature_dim)))["params"]
