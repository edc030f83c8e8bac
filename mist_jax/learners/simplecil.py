"""SimpleCIL: class-mean prototypes and a cosine classifier (Zhou et al. 2023).

docs/algorithm.md §9; official code models/simplecil_mist.py (``replace_fc``): after each task
the prototype of each new class is the mean feature of its training images; old prototypes are
never recomputed. Logits = cosine(feature, prototype) over all seen classes (the authors'
CosineLinear also multiplies by a scale sigma, which does not change the argmax or the top-k).

Option (not in the official code): ``drift_compensation`` moves old prototypes by the drift of
the task's features when MIST moved the backbone (``learners.drift``, SDC; on the unit sphere,
where sigma = 0.3 has the meaning of Yu et al.'s normalised embeddings).
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp
from flax import struct

from mist_jax.infra.programs import Program
from mist_jax.learners.base import Learner, check_task
from mist_jax.learners.drift import DEFAULT_SIGMA, compensate_drift
from mist_jax.models.normalize import l2_normalize


@struct.dataclass
class SimpleCILState:
    """prototypes: float32[num_seen, D], row c = mean feature of class c (fixed once set)."""

    prototypes: jax.Array


@jax.jit
def cosine_logits(features: jax.Array, prototypes: jax.Array) -> jax.Array:
    """float32[N, D] x float32[K, D] -> float32[N, K] cosine similarities (eps 1e-12 on norms)."""
    return l2_normalize(features) @ l2_normalize(prototypes).T


def class_means(features: jax.Array, labels: jax.Array, start: int, num_classes: int) -> jax.Array:
    """Mean feature of classes start..start+num_classes-1: float32[num_classes, D].

    Labels outside that range are ignored; a class without samples gets NaN (callers check).
    """
    onehot = jax.nn.one_hot(labels - start, num_classes, dtype=features.dtype)  # [N, K]
    return (onehot.T @ features) / onehot.sum(axis=0)[:, None]


@dataclasses.dataclass(frozen=True)
class SimpleCIL(Learner):
    """Prototype learner; ``drift_compensation`` (SDC, kernel width ``drift_sigma`` on unit
    features) optionally moves old prototypes when the backbone moves."""

    name: ClassVar[str] = "simplecil"
    drift_compensation: bool = False
    drift_sigma: float = DEFAULT_SIGMA

    def init(self, key: jax.Array, feature_dim: int) -> SimpleCILState:
        """No prototypes yet: float32[0, feature_dim] (key unused: SimpleCIL is deterministic)."""
        del key
        return SimpleCILState(prototypes=jnp.zeros((0, feature_dim), jnp.float32))

    def fit_task(self, state: SimpleCILState, features, labels,
                 task_range: tuple[int, int]) -> SimpleCILState:
        """Append the prototypes of task classes [start, end).

        Raises:
          ValueError: see ``base.check_task`` (every task class needs a sample).
        """
        num_seen, dim = state.prototypes.shape
        features, labels = check_task(features, labels, task_range, num_seen, dim)
        start, end = task_range
        new = class_means(jnp.asarray(features), jnp.asarray(labels), start, end - start)
        return state.replace(prototypes=jnp.concatenate([state.prototypes, new]))

    def logits(self, state: SimpleCILState, features) -> jax.Array:
        """Cosine similarities float32[N, num_seen]."""
        return cosine_logits(jnp.asarray(features, jnp.float32), state.prototypes)

    def programs(self, state, backbone, images, num_classes) -> list[Program]:
        """``cosine_logits`` of a test batch against ``num_classes`` prototypes."""
        dim = state.prototypes.shape[1]
        args = (jax.ShapeDtypeStruct((images.shape[0], dim), jnp.float32),
                jax.ShapeDtypeStruct((num_classes, dim), jnp.float32))
        return [Program("simplecil logits", cosine_logits, args, images.shape[0], test_passes=1)]

    def before_tuning(self, state: SimpleCILState, task):
        """With ``drift_compensation``, from the second task on: the task's features before
        MIST tunes the backbone (``compensate`` moves the prototypes by their drift)."""
        del state
        return task.features() if self.drift_compensation and task.index > 0 else None

    def compensate(self, state: SimpleCILState, before, after) -> SimpleCILState:
        """SDC of the unit-normalised prototypes by the task's unit-normalised feature drift
        (the cosine classifier only uses prototype directions)."""
        unit = lambda x: l2_normalize(jnp.asarray(x, jnp.float32))
        return state.replace(prototypes=compensate_drift(
            unit(state.prototypes), unit(before), unit(after), self.drift_sigma))
