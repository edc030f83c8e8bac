"""Orbax checkpoints of a class-incremental run: one per finished task, and in-task ones.

A task checkpoint (``<workdir>/checkpoints/<task>``) holds everything needed to continue
bit-for-bit: the array state (backbone params, projection head, learner state, MIST
count/frozen masks) and a JSON record (next task index, class order, metrics so far, the
config). An in-task checkpoint (``<workdir>/checkpoints_in_task/<step>``, only the newest kept)
holds the unfinished task's loop state on top of the last task checkpoint (the MIST epoch and
step, params, optimizer state, scores, mask; or the learner's), written every
``checkpoint_every_steps`` steps, on SIGINT/SIGTERM and on a preemption notice, and deleted
once the task's own checkpoint is on disk. A different config fails naming the keys.

Every checkpoint's record holds the SHA-256 of each array it stores (``array_digests``); a
restore recomputes them and refuses a damaged checkpoint, naming it and the one to fall back to.
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
from flax.traverse_util import flatten_dict, unflatten_dict

from mist_jax.infra import paths, trees

# Config keys that do not change results (mesh: only float rounding): a checkpoint stays valid.
_RESULT_NEUTRAL = ("compare_baseline", "mist.log_every", "learner.eval_batch_size", "mesh",
                   "data.workers", "checkpoint_every_steps", "mist.cache_dir")
#: Orbax step of in-task checkpoint n of task t: t * IN_TASK_STRIDE + n.
IN_TASK_STRIDE = 10**9


def _comparable(config: dict) -> dict:
    """The config as compared between runs: result-neutral keys dropped, ``data.data_dir``
    resolved ("" = the default folder, symlinks and relative paths resolved), and of the
    ``learner`` blocks only the chosen learner's (registering another learner, which adds its
    block to every config, changes no run)."""
    cfg = json.loads(json.dumps(config, sort_keys=True, default=str))
    learner = cfg.get("learner")
    if isinstance(learner, dict) and isinstance(learner.get("name"), str):
        cfg["learner"] = {k: v for k, v in learner.items()
                          if not isinstance(v, dict) or k == learner["name"]}
    for dotted in _RESULT_NEUTRAL:
        *parents, leaf = dotted.split(".")
        node = cfg
        for p in parents:
            node = node.get(p, {})
        node.pop(leaf, None)
    data = cfg.get("data", {})
    if "data_dir" in data:
        data["data_dir"] = os.path.realpath(os.path.expanduser(data["data_dir"]
                                                               or paths.data_dir()))
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
        directory = Path(directory).absolute()
        # Synchronous: the run waits for each save anyway, and the async path then warns
        # "Waiting for previous save" at every task about that very wait.
        manager = lambda path, keep: ocp.CheckpointManager(
            path, options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                                       enable_async_checkpointing=False),
            # Registered up front, so reading one item (the record) needs no guess at the other.
            item_handlers={"state": ocp.StandardCheckpointHandler(),
                           "record": ocp.JsonCheckpointHandler()})
        self._manager = manager(directory, max_to_keep)
        self._in_task = manager(directory.with_name(directory.name + "_in_task"), 1)

    def save(self, task: int, state: Any, record: dict) -> None:
        """Write the checkpoint of finished task ``task`` and block until it is on disk.

        Args:
          task: index of the finished task (the orbax step).
          state: nested dicts of non-empty arrays (orbax refuses zero-size arrays).
          record: JSON-serialisable run record (next task, class order, metrics so far).
        """
        record = dict(record, config_fingerprint=self.fingerprint, config=self.config,
                      array_sha256=array_digests(flatten_dict(state, sep="/")))
        self._manager.save(task, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state), record=ocp.args.JsonSave(record)))
        self._manager.wait_until_finished()

    def save_in_task(self, task: int, n: int, state: dict, record: dict) -> None:
        """Write in-task checkpoint ``n`` (>= 1, increasing within the task) of ``task``.

        Args:
          state: nested dicts whose leaves are arrays (numpy or jax, any size) or JSON values
            (numbers, strings, lists, None): arrays go to the array store, the rest to the
            record, so the caller need not sort them.
          record: JSON-serialisable extras (the task log so far, the event-log length).
        """
        step = task * IN_TASK_STRIDE + n
        if step == self._in_task.latest_step():
            return  # stopped again where the run resumed: nothing new to write
        flat = flatten_dict(state, sep="/")
        arrays = {k: to_host(v) for k, v in flat.items() if _is_array(v) and np.size(v)}
        empty = {k: [list(np.shape(v)), np.asarray(v).dtype.str] for k, v in flat.items()
                 if _is_array(v) and not np.size(v)}
        values = {k: v for k, v in flat.items() if not _is_array(v)}
        record = dict(record, task=task, n=n, values=values, empty=empty,
                      config_fingerprint=self.fingerprint, config=self.config,
                      array_sha256=array_digests(arrays))
        self._in_task.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(arrays), record=ocp.args.JsonSave(record)))
        self._in_task.wait_until_finished()

    def restore_in_task(self, task: int) -> tuple[dict, dict] | None:
        """The newest in-task checkpoint of ``task`` as ``(state, record)`` (state nested as
        saved, arrays as numpy), or None. In-task checkpoints of other tasks (left by a kill
        between a task checkpoint and their deletion) are deleted.
        Raises: ValueError as ``restore``.
        """
        step = self._in_task.latest_step()
        if step is None:
            return None
        if step // IN_TASK_STRIDE != task:
            self.clear_in_task()
            return None
        record = self._restore(self._in_task, step, "record", ocp.args.JsonRestore)
        self._check_config(record, self._in_task)
        arrays = self._restore(self._in_task, step, "state", lambda: ocp.args.StandardRestore(
            self._numpy_target(self._in_task, step)))
        verify(arrays, record, self._in_task.directory / str(step),
               "the run resumes from the last finished task's checkpoint")
        flat = dict(record["values"])
        flat.update({k: np.zeros(shape, dtype) for k, (shape, dtype) in record["empty"].items()})
        flat.update(flatten_dict(arrays, sep="/") if arrays else {})
        return unflatten_dict(flat, sep="/"), record

    def clear_in_task(self) -> None:
        """Delete every in-task checkpoint (the task they belong to is checkpointed)."""
        for step in self._in_task.all_steps():
            self._in_task.delete(step)

    def reached_preemption(self, task: int, n: int) -> bool:
        """True at in-task step ``n`` of ``task`` when a preemption notice reached this job
        (orbax / JAX's preemption sync point, the same answer on every host; always False
        where JAX runs no preemption service, e.g. one CPU process)."""
        return self._in_task.reached_preemption(task * IN_TASK_STRIDE + n)

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
        record = self._restore(self._manager, step, "record", ocp.args.JsonRestore)
        self._check_config(record, self._manager)
        state = self._restore(self._manager, step, "state", lambda: ocp.args.StandardRestore(
            self._numpy_target(self._manager, step)))
        earlier = [s for s in self._manager.all_steps() if s < step]
        verify(state, record, self._manager.directory / str(step),
               f"the run resumes from {self._manager.directory / str(max(earlier))}" if earlier
               else "the run starts afresh")
        return state, record

    def _check_config(self, record: dict, manager: ocp.CheckpointManager) -> None:
        # The stored config, compared as this version compares configs (a checkpoint of an
        # older version, whose fingerprint dropped less, stays usable).
        stored = (config_fingerprint(record["config"]) if "config" in record
                  else record.get("config_fingerprint"))
        if stored != self.fingerprint:
            diff = config_diff(record["config"], self.config) if "config" in record else []
            raise ValueError(
                f"The checkpoint in {manager.directory} was written by a different config "
                f"(fingerprint {stored} != {self.fingerprint}"
                + ("; " + "; ".join(diff[:10]) if diff else "") + "). Use a new --workdir for a "
                "new experiment, or re-run with the original config.")

    @staticmethod
    def _numpy_target(manager: ocp.CheckpointManager, step: int) -> Any:
        """A restore target of numpy arrays shaped like the saved state.

        Every process reads each array whole, also those written as FSDP shards spread over
        several hosts, which a target-less restore would hand back as arrays no single process
        can read; the runner then lays them out on its own mesh (``MeshContext.place``).
        """
        tree = manager.item_metadata(step)["state"]
        tree = getattr(tree, "tree", tree)
        return jax.tree_util.tree_map(lambda m: np.empty(m.shape, m.dtype), tree)

    @staticmethod
    def _restore(manager: ocp.CheckpointManager, step: int, item: str,
                 make_args: Callable[[], Any]) -> Any:
        """Restore ``item`` of ``step`` with the orbax args ``make_args()`` builds; any failure,
        reading the metadata included, becomes the ValueError naming the folder."""
        try:
            return manager.restore(step, args=ocp.args.Composite(**{item: make_args()}))[item]
        except Exception as e:  # pylint: disable=broad-except
            raise ValueError(f"Checkpoint {manager.directory / str(step)} is unreadable "
                             f"({e}); move the folder away to start the run afresh.") from e

    def close(self) -> None:
        self._manager.close()
        self._in_task.close()


def array_digests(flat: dict[str, Any]) -> dict[str, str]:
    """SHA-256 (hex) of each array of a flat ``{path: array}`` dict (``trees.sha256`` of the
    array alone: its dtype, shape and C-order bytes). Arrays this process cannot read whole
    (shards spread over several hosts) are left out, and so are not verified."""
    return {k: trees.sha256(v) for k, v in flat.items()
            if _is_array(v) and getattr(v, "is_fully_addressable", True)}


def verify(state: Any, record: dict, where: Path, fallback: str) -> None:
    """Check restored arrays against the digests their checkpoint was written with.

    Args:
      state: the restored arrays (nested dicts, or flat with "/"-joined keys, as saved).
      record: the checkpoint's JSON record; one without ``array_sha256`` (written by an older
        version) is not checked.
      where: the checkpoint folder, named in the error.
      fallback: what happens once that folder is moved away (named in the error).
    Raises:
      ValueError: an array is missing or its bytes differ from those written (a damaged file),
        naming the array, the folder and the fallback.
    """
    expected = record.get("array_sha256") or {}
    flat = flatten_dict(state, sep="/") if state else {}
    for key in sorted(expected):
        if key not in flat or trees.sha256(flat[key]) != expected[key]:
            raise ValueError(
                f"Checkpoint {where} is damaged: its array {key!r} is "
                + ("missing" if key not in flat else "not the one written (SHA-256 differs)")
                + f". Move that folder away and re-run: {fallback}.")


def to_host(x: Any) -> Any:
    """An array as a checkpoint stores it: replicated (or host) arrays as numpy, written by
    process 0; FSDP-sharded jax arrays unchanged, written collectively (each process its
    shards)."""
    return x if isinstance(x, jax.Array) and not x.is_fully_replicated else np.asarray(x)


def _is_array(x: Any) -> bool:
    return isinstance(x, (np.ndarray, np.generic, jax.Array))
