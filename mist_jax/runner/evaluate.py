"""Features and test accuracy of a run (docs/benchmarks.md): backbone features with the test
transform, cached per test image while the backbone is unchanged, and the accuracy row, top-1
and top-5 of the learner on the classes seen so far."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from mist_jax.data.tasks import TaskData
from mist_jax.runner import metrics
from mist_jax.runner.inputs import Inputs
from mist_jax.runner.state import RunState


def jit_forward(model, preprocess: Callable, mesh, params: Any) -> Callable:
    """The jitted feature extraction ``(backbone, images float32[B, S, S, 3]) -> float32[B, D]``
    on ``mesh`` (``sharding.MeshContext``): the backbone laid out as ``params["backbone"]``,
    the features replicated."""
    return jax.jit(lambda p, x: model.apply({"params": p}, preprocess(x)),
                   in_shardings=(mesh.shardings(params)["backbone"], None),
                   out_shardings=mesh.replicated)


class Evaluator:
    """Feature extraction and evaluation on the run's mesh.

    Args:
      data: the run's ``TaskData``; model, preprocess: the ViT and its pixel preprocessing;
      inputs: the run's batches; params: the params pytree (for the backbone's layout);
      batch_size: images per forward pass (``config.learner.eval_batch_size``).
    """

    def __init__(self, data: TaskData, model, preprocess: Callable, inputs: Inputs,
                 params: Any, batch_size: int):
        self.data, self.inputs, self.batch_size, self.width = data, inputs, batch_size, model.width
        self._forward = jit_forward(model, preprocess, inputs.mesh, params)
        self._cache = None  # test features per test image, valid for one backbone version

    def features(self, backbone: Any, split: str, idx: np.ndarray, labels: np.ndarray,
                 embed: Callable | None = None) -> np.ndarray:
        """float32[N, D] backbone features of images ``idx`` of ``split`` with the test
        transform (docs/algorithm.md §9), or ``embed(backbone, images)`` float32[N, F]."""
        images = self.data.train if split == "train" else self.data.test
        embed = embed or self._forward
        feats = [np.asarray(embed(backbone, x)) for x, _ in
                 self.inputs.batches(images, idx, labels, self.batch_size)]
        return np.concatenate(feats) if feats else np.zeros((0, self.width), np.float32)

    def test_features(self, state: RunState, pos: np.ndarray) -> np.ndarray:
        """Features of the test images at positions ``pos`` of ``data.test_idx``, each computed
        once per backbone version (an unchanged backbone: MIST off, or mist.tasks='first'
        after task 0, reuses the features of earlier tasks' classes)."""
        data, cache = self.data, self._cache
        if cache is None or cache["version"] != state.backbone_version:
            n = len(data.test_idx)
            cache = self._cache = {"version": state.backbone_version,
                                   "feats": np.zeros((n, self.width), np.float32),
                                   "have": np.zeros(n, bool)}
        need = pos[~cache["have"][pos]]
        if need.size:
            cache["feats"][need] = self.features(state.params["backbone"], "test",
                                                 data.test_idx[need], data.test_labels[need])
            cache["have"][need] = True
        return cache["feats"][pos]

    def evaluate(self, learner, state: RunState, num_seen: int
                 ) -> tuple[list[float], float, float]:
        """(per-task accuracy row, top-1, top-5) in % of ``learner`` on the test images of the
        first ``num_seen`` classes."""
        pos = self.data.seen(num_seen)
        labels = self.data.test_labels[pos]
        logits = learner.test_logits(state.learner, TestView(self, state, pos))[:, :num_seen]
        seen = [r for r in self.data.ranges if r[1] <= num_seen]
        return (metrics.accuracy_row(logits, labels, seen),
                metrics.topk_accuracy(logits, labels, 1), metrics.topk_accuracy(logits, labels, 5))


@dataclasses.dataclass
class TestView:
    """What a learner's ``test_logits`` may read: the seen classes' test images as cached
    ``features()`` or as ``batches()`` of (images, labels), the ``backbone`` and the mesh's
    ``replicated`` sharding."""

    evaluator: Evaluator
    state: RunState
    pos: np.ndarray

    @property
    def backbone(self) -> Any:
        return self.state.params["backbone"]

    @property
    def replicated(self) -> jax.sharding.Sharding:
        return self.evaluator.inputs.mesh.replicated

    def features(self) -> np.ndarray:
        return self.evaluator.test_features(self.state, self.pos)

    def batches(self):
        data, ev = self.evaluator.data, self.evaluator
        return ev.inputs.batches(data.test, data.test_idx[self.pos], data.test_labels[self.pos],
                                 ev.batch_size)
