"""What a learner is: a registered plug-in that declares what it needs from the run.

docs/algorithm.md §1 and §9. After each task's backbone tuning (MIST, or none) the runner
hands the task to the learner. A learner is an immutable hyper-parameter object built from its
own config block (``config.learner.<name>``, ``default_config``); its state is a pytree
(``flax.struct.dataclass``) that orbax checkpoints next to the backbone. Labels are remapped
(class-order positions) and tasks arrive in order: task t covers classes [start, end) with
start equal to the number of classes seen before it.

Two kinds (``inputs``):

* ``"features"``: freeze-based learners (SimpleCIL, RanPAC) fit a classifier on features
  float32[N, D] of the frozen backbone (test transform): ``init(key, feature_dim)``,
  ``fit_task(state, features, labels, task_range)``, ``logits(state, features)``.
* ``"images"``: learners with a trainable pytree of their own (prompts, adapters, a head)
  trained through the frozen backbone on augmented images: see ``ImageLearner``; the runner's
  ``learners.loop.fit_on_images`` trains it.

Hooks with defaults let a learner change the run without the runner knowing its name:
``tunes_backbone`` + ``tuning`` (the learner tunes the backbone itself on every task, e.g.
dense fine-tuning), ``after_tuning`` (read the tuned params), ``tracks_drift`` +
``compensate`` (move old statistics when the backbone moved).
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import ml_collections
import numpy as np

State = Any
PyTree = Any
INPUTS = ("features", "images")


class Learner:
    """Base class of every learner (subclass it as a frozen dataclass).

    Class attributes: ``name`` (registry key and config block name), ``inputs`` ("features"
    or "images"), ``tunes_backbone`` (True: the learner tunes the backbone on every task with
    the settings of ``tuning``, whatever ``mist.enabled`` says; its runs are named after it).

    Features learners implement ``init(key, feature_dim)``, ``fit_task(state, features,
    labels, task_range)`` and ``logits(state, features) -> float32[N, >= num_seen]`` (the
    runner keeps the first num_seen columns; argmax = prediction).
    """

    name: ClassVar[str]
    inputs: ClassVar[str] = "features"
    tunes_backbone: ClassVar[bool] = False
    trains_backbone: ClassVar[bool] = False  # image learners only (``ImageLearner``)

    @classmethod
    def default_config(cls) -> ml_collections.ConfigDict:
        """The learner's config block (``config.learner.<name>``): its dataclass fields with
        their defaults (override to hide fields or add others)."""
        return ml_collections.ConfigDict({f.name: f.default for f in dataclasses.fields(cls)
                                          if f.default is not dataclasses.MISSING})

    @classmethod
    def from_config(cls, config: ml_collections.ConfigDict, **run: Any) -> "Learner":
        """Build from the config block; ``run`` holds what the run knows (``num_classes``,
        ``model``, ``preprocess``) for learners that need it (override to take it).

        Raises: TypeError for a key the learner does not take.
        """
        del run
        return cls(**config.to_dict())

    def tuning(self, mist_cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
        """The backbone-tuning settings when ``tunes_backbone`` (default: ``mist_cfg``)."""
        return mist_cfg

    def after_tuning(self, state: State, params: PyTree) -> State:
        """Called after the backbone was tuned on a task, with the tuned ``{"backbone",
        "head"}`` params (host arrays); default: no change."""
        del params
        return state

    @property
    def tracks_drift(self) -> bool:
        """True: the runner passes features before and after tuning to ``compensate``."""
        return False

    def compensate(self, state: State, before, after) -> State:
        """Move old-class statistics by the drift of the task's features float32[N, D]
        ``before`` -> ``after`` tuning (called from the second task on); default: no change."""
        del before, after
        return state


def check_task(features, labels, task_range: tuple[int, int], num_seen: int,
               feature_dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Validate one task's inputs; returns (float32[N, D], int64[N]) numpy copies.

    Raises:
      ValueError: shapes, a task that does not start at `num_seen`, labels outside the task, or
        a task class without samples.
    """
    features = np.asarray(features, np.float32)
    labels = np.asarray(labels, np.int64)
    start, end = task_range
    if features.ndim != 2 or features.shape[1] != feature_dim:
        raise ValueError(f"features must be [N, {feature_dim}], got {features.shape}.")
    if labels.shape != features.shape[:1]:
        raise ValueError(f"labels must be [{features.shape[0]}], got {labels.shape}.")
    if start != num_seen or end <= start:
        raise ValueError(f"task_range {task_range} must start at the {num_seen} classes seen so "
                         "far and be non-empty (tasks are learned in order).")
    if labels.size == 0 or labels.min() < start or labels.max() >= end:
        raise ValueError(f"labels must be remapped labels in [{start}, {end}); got "
                         f"{'none' if labels.size == 0 else (labels.min(), labels.max())}.")
    missing = np.setdiff1d(np.arange(start, end), labels)
    if missing.size:
        raise ValueError(f"Task classes {missing.tolist()} have no training sample.")
    return features, labels
