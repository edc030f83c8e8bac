"""One task as a learner sees it (``Learner.learn_task(state, task)``): its images and labels,
the backbone as tuned for it, its features, its training batches with the run's in-task
checkpoint hooks, and the one way to hand back a backbone the learner trained."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from mist_jax.data import batches
from mist_jax.infra import loop, seeds


@dataclasses.dataclass
class TaskView:
    """Task ``index`` of a run (``runner.train.Run`` builds one per task).

    Attributes:
      index: the task number t; range: its classes ``(start, end)``.
      idx, labels: int64[N] indices into the training images and their remapped labels.
      before: what the learner's ``before_tuning`` returned (None when it was not called).
      resume: the learner loop's snapshot to continue from (an in-task checkpoint), or None.
      at_boundary: the run's hook, called after every step of the learner's loop.
    """

    index: int
    range: tuple[int, int]
    idx: np.ndarray
    labels: np.ndarray
    run: Any = dataclasses.field(repr=False)
    before: Any = None
    resume: dict | None = None
    at_boundary: loop.Boundary | None = None

    @property
    def params(self) -> Any:
        """``{"backbone", "head"}`` as tuned for this task."""
        return self.run.state.params

    @property
    def backbone(self) -> Any:
        return self.run.state.params["backbone"]

    @property
    def replicated(self) -> jax.sharding.Sharding:
        return self.run.mesh.replicated

    def features(self, embed: Callable | None = None) -> np.ndarray:
        """float32[N, D] features of the task's training images (test transform), or
        ``embed(backbone, images)``'s float32[N, F]."""
        return self.run.evaluator.features(self.backbone, "train", self.idx, self.labels, embed)

    def steps_per_epoch(self, batch_size: int, drop_last: bool = False) -> int:
        return batches.num_batches(len(self.idx), batch_size, drop_last)

    def epoch_batches(self, batch_size: int, epochs: int, keyed: bool = False,
                      drop_last: bool = False) -> Callable:
        """``(epoch, start) -> batches`` of (images, labels[, key]) on the mesh for epochs 0 ..
        ``epochs`` - 1: shuffled, train transform, the learner's own seed streams; ``keyed``:
        batch b of epoch e also carries ``fold_in(key(seed, "learner_dropout", t, e), b)``;
        ``drop_last``: the last partial batch of each epoch is left out."""
        run, t = self.run, self.index
        keys = (lambda e: seeds.key(run.cfg.seed, "learner_dropout", t, e)) if keyed else None
        return run.inputs.epochs(run.data.train, self.idx, self.labels, batch_size, "learner_",
                                 t, epochs, keys=keys, desc=lambda e: f"task {t} "
                                 f"{run.learner.name} epoch {e + 1}", drop_last=drop_last)

    def replace_backbone(self, backbone: Any) -> None:
        """Keep the backbone a learner trained (SLCA's slow learner) for the rest of the run."""
        state = self.run.state
        state.params = self.run.mesh.place(dict(state.params, backbone=backbone))
        state.backbone_version += 1
