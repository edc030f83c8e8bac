"""Orbax checkpoints of a class-incremental run, one per finished task.

A checkpoint holds everything needed to continue bit-for-bit: the array state (backbone
params, projection head, learner state, MIST count/frozen masks) and a JSON record (next task
index, class order, metrics so far, the config fingerprint). Restoring under a different config
fails with a message instead of silently mixing two experiments.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax.traverse_util import flatten_dict

# Config keys that do not change results: changing them keeps a checkpoint valid.
# The mesh only changes float rounding (tests/test_sharding.py), so a run may resume on another.
_RESULT_NEUTRAL = ("compare_baseline", "mist.log_every", "learner.eval_batch_size", "mesh")


def _comparable(config: dict) -> dict:
    """The config as compared between runs: result-neutral keys dropped, ``data.data_dir``
    resolved ("" = the default folder, symlinks and relative paths resolved)."""
    cfg = json.loads(json.dumps(config, sort_keys=True, default=str))
    for dotted in _RESULT_NEUTRAL:
        *parents, leaf = dotted.split(".")
        node = cfg
        for p in parents:
            node = node.get(p, {})
        node.pop(leaf, None)
    data = cfg.get("data", {})
    if "data_dir" in data:
        from mist_jax.data.sources import default_data_dir

        data["data_dir"] = os.path.realpath(os.path.expanduser(data["data_dir"]
                                                               or default_data_dir()))
    return cfg


def config_fingerprint(config: dict) -> str:
    """sha256 (hex, 16 chars) of the comparable config (result-neutral keys dropped, paths
    resolved)."""
    return hashlib.sha256(json.dumps(_comparable(config), sort_keys=True).encode()).hexdigest()[:16]


def config_diff(old: dict, new: dict) -> list[str]:
    """``key: old -> new`` for every dotted key whose comparable value differs."""
    a, b = (flatten_dict(_comparable(c), sep=".") for c in (old, new))
    return [f"{k}: {a.get(k, '(absent)')!r} -> {b.get(k, '(absent)')!r}"
            for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


class RunCheckpointer:
    """Save/restore the run state after each task under ``<workdir>/checkpoints/<task>``.

    Args:
      directory: checkpoint folder (created if missing).
      config: the run's config as a plain dict (``ConfigDict.to_dict()``).
      max_to_keep: how many task checkpoints to keep (default 2: the newest and one spare).
    """

    def __init__(self, directory: str | Path, config: dict, max_to_keep: int = 2):
        self.config = config
        self.fingerprint = config_fingerprint(config)
        self._manager = ocp.CheckpointManager(
            Path(directory).absolute(),
            options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True),
        )

    def save(self, task: int, state: Any, record: dict) -> None:
        """Write the checkpoint of finished task ``task`` and block until it is on disk.

        Args:
          task: index of the finished task (the orbax step).
          state: nested dicts of non-empty arrays (orbax refuses zero-size arrays).
          record: JSON-serialisable run record (next task, class order, metrics so far).
        """
        record = dict(record, config_fingerprint=self.fingerprint, config=self.config)
        self._manager.save(task, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), record=ocp.args.JsonSave(record)))
        self._manager.wait_until_finished()

    def restore(self) -> tuple[Any, dict] | None:
        """The newest checkpoint as ``(state, record)``, or None when there is none.

        The state comes back as nested dicts of numpy arrays with the saved shapes and dtypes
        (the template is read from the checkpoint: learner states grow from task to task), on
        every process, whatever mesh or host count wrote it.
        Raises:
          ValueError: the checkpoint was written under a different config (names both
            fingerprints and the fix), or it cannot be read (corrupt; names the folder).
        """
        step = self._manager.latest_step()
        if step is None:
            return None
        record = self._restore(step, "record", ocp.args.JsonRestore)
        if record.get("config_fingerprint") != self.fingerprint:
            diff = config_diff(record["config"], self.config) if "config" in record else []
            raise ValueError(
                f"The checkpoint in {self._manager.directory} was written by a different config "
                f"(fingerprint {record.get('config_fingerprint')} != {self.fingerprint}"
                + ("; " + "; ".join(diff[:10]) if diff else "") + "). Use a new --workdir for a "
                "new experiment, or re-run with the original config.")
        state = self._restore(
            step, "state", lambda: ocp.args.StandardRestore(self._numpy_target(step)))
        return state, record

    def _numpy_target(self, step: int) -> Any:
        """A restore target of numpy arrays shaped like the saved state.

        Every process reads each array whole, also those written as FSDP shards spread over
        several hosts, which a target-less restore would hand back as arrays no single process
        can read; the runner then lays them out on its own mesh (``MeshContext.place``).
        """
        tree = self._manager.item_metadata(step)["state"]
        tree = getattr(tree, "tree", tree)
        return jax.tree_util.tree_map(lambda m: np.empty(m.shape, m.dtype), tree)

    def _restore(self, step: int, item: str, make_args: Callable[[], Any]) -> Any:
        """Restore ``item`` of ``step`` with the orbax args ``make_args()`` builds; any failure,
        reading the metadata included, becomes the ValueError naming the folder."""
        try:
            return self._manager.restore(step, args=ocp.args.Composite(**{item: make_args()}))[item]
        except Exception as e:
            raise ValueError(f"Checkpoint {self._manager.directory / str(step)} is unreadable "
                             f"({e}); move the folder away to start the run afresh.") from e

    def close(self) -> None:
        self._manager.close()
