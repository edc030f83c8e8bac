"""Full fine-tuning with cross-entropy: the forgetting-prone reference (no freezing, no MIST).

The learner tunes the backbone itself (its ``tuning`` is never None): on every task the runner
trains the whole backbone and a linear classifier over all classes with cross-entropy on the task's images
(MIST's tuner with the ``tuning`` settings: a dense mask, no drop, no damping, no freezing);
this learner then predicts with that classifier over the classes seen so far. It exists to show
what sparse tuning and freezing protect against (catastrophic forgetting).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp
import ml_collections
from flax import struct

from mist_jax.learners.base import Learner, check_task


@struct.dataclass
class FineTuneState:
    """kernel float32[D, C], bias float32[C]: the classifier over all C classes;
    num_seen int32 scalar: classes learned so far (logits are sliced to them)."""

    kernel: jax.Array
    bias: jax.Array
    num_seen: jax.Array


@dataclasses.dataclass(frozen=True)
class FineTune(Learner):
    """Cross-entropy fine-tuning reference over ``num_classes`` classes."""

    name: ClassVar[str] = "finetune"
    num_classes: int

    @classmethod
    def from_config(cls, config, *, num_classes: int, **run) -> "FineTune":
        """No options of its own; the classifier covers the run's ``num_classes``."""
        del run
        return cls(num_classes=num_classes, **config.to_dict())

    @classmethod
    def tuning(cls, mist_cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
        """``config.mist`` turned into dense cross-entropy fine-tuning of the whole backbone
        and a classifier over all classes on every task, whatever ``mist.enabled`` says:
        every weight selected, no drop, no damping, no freezing. Learning rates, epochs, batch
        size and optimizer stay as configured."""
        cfg = mist_cfg.copy_and_resolve_references()
        with cfg.unlocked():
            cfg.update(objective="ce", selector="random", select_rate=1.0, drop_rate=0.0,
                       overlap_decay=1.0, bookkeeping=False, tasks="all", enabled=True)
        return cfg

    def learn_task(self, state: FineTuneState, task) -> tuple[FineTuneState, dict]:
        """Install the classifier trained with the backbone (``task.params["head"]``), then
        mark the task's classes seen (``fit_task``)."""
        state = self.with_classifier(state, jax.device_get(task.params["head"]))
        return super().learn_task(state, task)

    def init(self, key: jax.Array, feature_dim: int) -> FineTuneState:
        """Zero classifier [D, num_classes] (the runner installs the trained one)."""
        del key
        return FineTuneState(jnp.zeros((feature_dim, self.num_classes), jnp.float32),
                             jnp.zeros((self.num_classes,), jnp.float32),
                             jnp.zeros((), jnp.int32))

    def with_classifier(self, state: FineTuneState, head: dict) -> FineTuneState:
        """Install the classifier trained with the backbone: head = {"kernel": [D, C],
        "bias": [C]} (Flax Dense params). Raises ValueError on a shape mismatch."""
        if tuple(head["kernel"].shape) != tuple(state.kernel.shape):
            raise ValueError(f"classifier kernel {head['kernel'].shape} != {state.kernel.shape}; "
                             "train with mist.objective='ce' over all classes.")
        return state.replace(kernel=jnp.asarray(head["kernel"], jnp.float32),
                             bias=jnp.asarray(head["bias"], jnp.float32))

    def fit_task(self, state: FineTuneState, features, labels,
                 task_range: tuple[int, int]) -> FineTuneState:
        """Mark classes [start, end) as seen (the classifier was trained with the backbone).

        Raises: ValueError, see ``base.check_task``.
        """
        check_task(features, labels, task_range, int(state.num_seen), state.kernel.shape[0])
        return state.replace(num_seen=jnp.asarray(task_range[1], jnp.int32))

    def logits(self, state: FineTuneState, features) -> jax.Array:
        """float32[N, num_seen] = features @ kernel + bias, restricted to seen classes."""
        k = int(state.num_seen)
        return jnp.asarray(features, jnp.float32) @ state.kernel[:, :k] + state.bias[:k]
