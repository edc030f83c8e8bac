"""The run state: everything a resume needs, packed for a checkpoint and unpacked here only.

A task checkpoint holds ``RunState.arrays()`` (params, MIST's bookkeeping, the learner's
state) and ``RunState.record`` (the metrics so far, the task logs, the class order, the event
log's length). An in-task checkpoint adds ``InTask``: where the task stopped (the loop's
snapshot and position), the task log so far, and the arrays of the phase (the features
``before`` tuning, or the tuned state once the learner's phase began).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any, NamedTuple

import flax
import jax
import numpy as np

from mist_jax.infra import checkpoint
from mist_jax.infra.sharding import MeshContext
from mist_jax.mist import masks

PyTree = Any


@dataclasses.dataclass
class RunState:
    """One run between tasks (and inside one).

    Attributes:
      params: ``{"backbone": ViT params, "head": projection head}`` float32, on the mesh.
      mist: MIST's ``MistState`` (count, frozen), shaped like ``params``.
      learner: the learner's state pytree.
      record: JSON-ready ``next_task``, ``acc_matrix``, ``top1_curve``, ``top5_curve``,
        ``tasks`` (one log per task), ``class_order`` and ``event_lines``.
      backbone_version: bumped whenever the backbone changes (test features are cached per
        version); not saved.
    """

    params: PyTree
    mist: masks.MistState
    learner: Any
    record: dict
    backbone_version: int = 0

    def arrays(self, learner: bool = True) -> dict:
        """The arrays a checkpoint stores (host numpy, FSDP shards as they are); without the
        learner's state when ``learner=False`` (the tuned-backbone cache)."""
        tree = {"params": self.params,
                "mist": {"count": self.mist.count, "frozen": self.mist.frozen}}
        if learner:
            tree["learner"] = flax.serialization.to_state_dict(self.learner)
        return jax.tree_util.tree_map(checkpoint.to_host, tree)

    def load(self, saved: dict, mesh: MeshContext) -> None:
        """Take the arrays of ``arrays()`` read back from a checkpoint (the learner's state
        too when saved), laid out on ``mesh``."""
        self.params = mesh.place(saved["params"])
        self.mist = masks.MistState(*mesh.place((saved["mist"]["count"],
                                                 saved["mist"]["frozen"])))
        if "learner" in saved:
            self.learner = flax.serialization.from_state_dict(self.learner, saved["learner"])
        self.backbone_version += 1

    def digest(self, tuning: Any) -> str | None:
        """sha256 of the tuning settings and the params and bookkeeping MIST starts from: the
        key of a tuned-backbone cache entry (None where a process does not hold every
        array, e.g. FSDP over several hosts: no caching there)."""
        leaves = jax.tree.leaves((self.params, tuple(self.mist)))
        if not all(getattr(x, "is_fully_addressable", True) for x in leaves):
            return None
        h = hashlib.sha256(json.dumps(tuning.to_dict(), sort_keys=True, default=str).encode())
        for x in jax.device_get(leaves):
            x = np.ascontiguousarray(x)
            h.update(f"{x.dtype.str}{x.shape}".encode())
            h.update(x.tobytes())
        return h.hexdigest()[:24]


class InTask(NamedTuple):
    """A task resumed from an in-task checkpoint: ``phase`` ("score", "tune" or "learner"),
    ``loop`` (the snapshot the phase's loop gave), ``arrays`` (``before``, or the tuned
    ``RunState.arrays()`` in the learner's phase), ``record`` (``position``, ``task_log``,
    ``mist_steps``, ``event_lines``, ``n``)."""

    phase: str
    loop: dict
    arrays: dict
    record: dict

    @classmethod
    def from_checkpoint(cls, state: dict, record: dict) -> "InTask":
        return cls(record["position"]["phase"], state.get("loop", {}), state.get("run", {}),
                   record)
