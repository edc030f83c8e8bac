"""What a learner is: a registered plug-in with one method the runner calls per task.

docs/algorithm.md §1 and §9. After each task's backbone tuning (MIST, or none) the runner
calls ``learner.learn_task(state, task)`` and, to evaluate, ``learner.test_logits(state,
view)``; it never asks what kind of learner it holds. A learner is an immutable
hyper-parameter object built from its own config block (``config.learner.<name>``,
``default_config``); its state is a pytree (``flax.struct.dataclass``) that orbax
checkpoints next to the backbone. Labels are remapped (class-order positions) and tasks arrive
in order: task t covers classes [start, end) with start equal to the number of classes seen.

``task`` (the runner's ``runner.task.TaskView``) gives what a learner may need: ``index``,
``range``, ``labels`` (host int64[N]), ``params`` / ``backbone`` (as tuned for this task),
``before`` (what ``before_tuning`` returned), ``features(embed=None)`` (float32[N, D] of the
task's training images, test transform), ``epoch_batches(batch_size, epochs)``, ``steps_per_epoch(
batch_size)``, ``at_boundary`` and ``resume`` (the in-task checkpoint hooks), ``replicated``
(the mesh's replicated sharding) and ``replace_backbone(backbone)`` (for a learner that trains
it). ``view`` (``runner.evaluate``) gives ``features()`` of the seen classes' test images,
``batches()`` of those images, ``backbone`` and ``replicated``.

This class is the base of the freeze-based learners (SimpleCIL, RanPAC): they fit a
classifier on features of the backbone; ``learners.images.ImageLearner`` is the base of those
that train parameters of their own through it.
"""

from __future__ import annotations

import dataclasses
from typing import Any, ClassVar

import ml_collections
import numpy as np

State = Any
PyTree = Any


class Learner:
    """Base class of every learner (subclass it as a frozen dataclass).

    Class attribute ``name``: the registry key and config block name. A features learner
    implements ``init(key, feature_dim)``, ``fit_task(state, features, labels, task_range)``
    and ``logits(state, features) -> float32[N, >= num_seen]`` (the runner keeps the first
    num_seen columns; argmax = prediction); ``learn_task`` and ``test_logits`` below call them.
    """

    name: ClassVar[str]

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

    @classmethod
    def tuning(cls, mist_cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict | None:
        """The backbone-tuning settings of the run: ``config.mist`` when MIST is enabled, else
        None (the backbone stays as pre-trained). A learner that tunes the backbone itself
        returns its own settings (``finetune``); their ``tasks`` says which tasks tune."""
        return mist_cfg if mist_cfg.enabled else None

    def before_tuning(self, state: State, task) -> Any:
        """Called before the backbone is tuned on ``task``; what it returns reaches
        ``learn_task`` as ``task.before`` (default None; SimpleCIL's drift compensation keeps
        the task's features before tuning)."""
        del state, task

    def learn_task(self, state: State, task) -> tuple[State, dict]:
        """Learn ``task`` (module docstring); returns ``(state, log)`` (JSON-ready entries for
        the task's log). Default: ``fit_task`` on the task's features, after ``compensate``
        when ``before_tuning`` gave features."""
        features = task.features()
        if task.before is not None:
            state = self.compensate(state, task.before, features)
        return self.fit_task(state, features, task.labels, task.range), {}

    def test_logits(self, state: State, view) -> np.ndarray:
        """float32[N, >= num_seen] logits of the seen classes' test images (``view``, module
        docstring). Default: ``logits`` on their features."""
        return np.asarray(self.logits(state, view.features()))

    def compensate(self, state: State, before, after) -> State:
        """Move old-class statistics by the drift of the task's features float32[N, D]
        ``before`` -> ``after`` tuning; default: no change."""
        del before, after
        return state

    def programs(self, state: State, backbone: PyTree, images: Any, num_classes: int) -> list:
        """The learner's own jitted programs at the run's shapes, as ``infra.programs.Program``s
        for the dry run (``runner/plan.py``); nothing is computed.

        Args:
          state: the abstract state of ``init`` (``jax.eval_shape``; ShapeDtypeStructs).
          backbone: the abstract ViT params; images: an abstract float32[B, S, S, 3] test
            batch (B = ``learner.eval_batch_size``).
          num_classes: classes seen after the last task (shapes of the final evaluation).
        Default: none (a features learner's fit runs on the host; its features are the
        runner's feature program).
        """
        del state, backbone, images, num_classes
        return []


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
