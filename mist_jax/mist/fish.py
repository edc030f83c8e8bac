"""FISH-style scoring: the Fisher score of a cross-entropy loss instead of the MI loss.

The ablation "Fisher under the cross-entropy loss" (FISH mask, Sung et al., NeurIPS 2021,
"Training Neural Networks with Fixed Sparse Masks", eq. 2: the empirical Fisher of
log p(y | x)) with everything else MIST's: one scoring pass, the per-unit budget, MI-loss
tuning with drop and bookkeeping (``mist.selector = "fish"``; docs/algorithm.md §13).

The classifier whose cross-entropy is scored must exist before any training, so it is the
task's nearest-class-mean cosine classifier (SimpleCIL's, Zhou et al. 2023): the prototypes are
the mean backbone features of each class in the task, taken over the scoring pass's images
under the backbone being scored, and ``logits = cos(f(x), prototype_c) / temperature``.
Deviation from Sung et al.: squared *batch* gradients summed over batches, as MIST's
MI-Fisher (``sensitivity.fisher_scores``), not per-example squared gradients.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mist_jax.models.normalize import l2_normalize
from mist_jax.mist import objectives

PyTree = Any


def make_loss_fn(model: nn.Module, preprocess: Callable, temperature: float = 0.07) -> Callable:
    """Cross-entropy of the prototype classifier: ``loss(params, batch) -> float32 scalar``.

    ``params = {"backbone", "head"}`` (the head is unused: its score is 0, and it is always
    selected anyway); ``batch = (images float32[B, S, S, 3], labels int32[B], key, classes
    int32[C] sorted, prototypes float32[C, D] L2-normalised)``; a label must be one of
    ``classes``. The key is ignored (one view: the scoring pass's images).
    """

    def loss_fn(params, batch):
        images, labels, _, classes, prototypes = batch
        feats = model.apply({"params": params["backbone"]}, preprocess(images))
        feats = l2_normalize(feats.astype(jnp.float32), convention="mist")
        logits = feats @ prototypes.T / temperature
        return objectives.cross_entropy(logits, jnp.searchsorted(classes, labels))

    return loss_fn


class FishScorer:
    """The prototype pass and the loss of ``selector = "fish"``.

    Args:
      model, preprocess: the backbone module and its input preprocessing.
      temperature: the cosine logits' temperature (``config.mist.temperature``).
      replicated: the mesh's replicated sharding (``MeshContext.replicated``), so that every
        process reads the whole batch's features and labels; None: one process.
    """

    def __init__(self, model: nn.Module, preprocess: Callable, temperature: float = 0.07,
                 replicated: Any = None):
        self.loss_fn = make_loss_fn(model, preprocess, temperature)
        self._features = jax.jit(
            lambda p, x, y: (model.apply({"params": p}, preprocess(x)), y),
            out_shardings=replicated)

    def prototypes(self, backbone: PyTree, batches: Iterable) -> tuple[np.ndarray, np.ndarray]:
        """``(classes int32[C] sorted, prototypes float32[C, D])``: the L2-normalised mean
        feature of each class over ``batches`` of ``(images, labels, ...)``.
        Raises: ValueError when ``batches`` is empty."""
        sums: dict[int, np.ndarray] = {}
        counts: dict[int, int] = {}
        for images, labels, *_ in batches:
            feats, labels = jax.device_get(self._features(backbone, images, labels))
            feats = np.asarray(feats, np.float64)
            for c in np.unique(labels):
                rows = feats[labels == c]
                sums[int(c)] = sums.get(int(c), 0.0) + rows.sum(0)
                counts[int(c)] = counts.get(int(c), 0) + len(rows)
        if not sums:
            raise ValueError("FISH scoring got no batches: the task has no training images.")
        classes = np.array(sorted(sums), np.int32)
        protos = np.stack([sums[c] / counts[c] for c in classes])
        protos /= np.maximum(np.linalg.norm(protos, axis=1, keepdims=True), 1e-8)
        return classes, protos.astype(np.float32)

    def batches(self, backbone: PyTree, epoch_batches: Callable[[int, int], Iterable],
                batches: Iterable) -> Iterator:
        """``batches`` (the scoring pass, possibly resumed) with the task's classes and
        prototypes appended to each; the prototypes come from the whole pass
        (``epoch_batches(0, 0)``), so a resumed pass scores with the same classifier."""
        classes, protos = self.prototypes(backbone, epoch_batches(0, 0))
        for batch in batches:
            yield (*batch, classes, protos)
