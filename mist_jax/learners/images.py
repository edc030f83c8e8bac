"""Learners that train a pytree of their own through the frozen backbone (``inputs="images"``).

Prompt-, prefix- and adapter-based learners (L2P, DualPrompt, CODA-Prompt, APER, EASE) keep the
pre-trained backbone frozen (MIST may have tuned it before the task) and train extra parameters
on augmented images, using the ViT's extension points (``mist_jax.models.extensions``). Such a
learner states its loss and its classifier as pure functions; ``fit_on_images`` is the one
training loop for all of them, so a new learner is one file: a ``flax.struct`` state with a
``params`` field, ``init``, ``loss``, ``logits`` and a config block with ``epochs``,
``batch_size`` and ``learning_rate`` (tests/prompt_learner.py is a 40-line example).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterable
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mist_jax.learners.base import Learner

PyTree = Any
_RUN_FIELDS = ("num_classes", "model", "preprocess")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ImageLearner(Learner):
    """Base of image learners. Subclasses are frozen dataclasses and implement

    * ``init(key, feature_dim) -> state``: a ``flax.struct`` dataclass with a ``params`` field
      (the trainable pytree) and anything else the learner keeps (checkpointed with it);
    * ``loss(params, state, backbone, images, labels, task_range) -> float32 scalar``: pure
      and jit-able; images float32[B, S, S, 3] (train transform, not yet preprocessed),
      labels int32[B], task_range int32[2] = (start, end) of the task's classes;
    * ``logits(state, backbone, images) -> float32[N, >= num_seen]``: pure and jit-able;
    * optionally ``end_task(state, task_range) -> state`` and ``optimizer()``.

    Fields: ``epochs`` and ``batch_size`` of the per-task loop, ``learning_rate`` of the
    default optimizer (optax.adam), and the run's ``num_classes``, ViT ``model`` and pixel
    ``preprocess`` (passed by ``from_config``; not config keys).
    """

    inputs: ClassVar[str] = "images"
    epochs: int = 1
    batch_size: int = 32
    learning_rate: float = 1e-3
    num_classes: int = 0
    model: Any = dataclasses.field(default=None, compare=False)
    preprocess: Callable = dataclasses.field(default=None, compare=False)

    @classmethod
    def default_config(cls):
        """The dataclass fields with defaults, without the run's ``_RUN_FIELDS``."""
        config = super().default_config()
        for run_field in _RUN_FIELDS:
            del config[run_field]
        return config

    @classmethod
    def from_config(cls, config, **run) -> "ImageLearner":
        """Build from the config block plus the run's ``num_classes``, ``model``, ``preprocess``."""
        return cls(**{k: run[k] for k in _RUN_FIELDS if k in run}, **config.to_dict())

    def optimizer(self) -> optax.GradientTransformation:
        """The per-task optimizer of ``params`` (default: ``optax.adam(learning_rate)``)."""
        return optax.adam(self.learning_rate)

    def end_task(self, state, task_range: tuple[int, int]):
        """Called after the task's epochs (e.g. to record the classes seen); default: no change."""
        del task_range
        return state


def fit_on_images(learner: ImageLearner, state, backbone: PyTree,
                  epoch_batches: Callable[[int], Iterable], task_range: tuple[int, int]
                  ) -> tuple[Any, list[float]]:
    """Train ``state.params`` on one task: ``learner.epochs`` epochs of ``learner.optimizer()``
    steps on ``learner.loss`` (backbone frozen; a fresh optimizer state per task).

    Args:
      learner: the image learner.
      state: its state (``state.params`` is trained).
      backbone: the ViT params (not modified).
      epoch_batches: ``epoch -> iterable of (images, labels)`` device batches.
      task_range: (start, end) of the task's classes.
    Returns:
      ``(learner.end_task(new state, task_range), mean loss per epoch)``.
    Raises:
      ValueError: a NaN/inf loss.
    """
    tx, step = _compiled(learner)
    params, opt_state = state.params, tx.init(state.params)
    bounds = jnp.asarray(task_range, jnp.int32)
    losses = []
    for epoch in range(learner.epochs):
        epoch_losses = []
        for images, labels in epoch_batches(epoch):
            params, opt_state, loss = step(params, opt_state, state, backbone, images, labels,
                                           bounds)
            epoch_losses.append(loss)
        mean = float(np.mean(jax.device_get(epoch_losses))) if epoch_losses else 0.0
        if not np.isfinite(mean):
            raise ValueError(f"learner {learner.name!r}: loss became {mean} in epoch {epoch}; "
                             f"lower learner.{learner.name}.learning_rate.")
        losses.append(mean)
    return learner.end_task(state.replace(params=params), task_range), losses


@functools.lru_cache(maxsize=8)
def _compiled(learner: ImageLearner) -> tuple[optax.GradientTransformation, Callable]:
    """The learner's optimizer and jitted step, compiled once per learner (not per task)."""
    tx = learner.optimizer()

    def step(params, opt_state, state, backbone, images, labels, bounds):
        loss, grads = jax.value_and_grad(learner.loss)(params, state, backbone, images, labels,
                                                       bounds)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return tx, jax.jit(step, donate_argnums=(0, 1))
