"""MIST's per-task result on disk, shared by runs that start a task from the same state.

MIST's result on task t depends on the config without its ``learner`` block, the tuning
settings, the data and the state the task starts from (every PRNG stream of MIST is keyed by
seed and task, never by the learner). So SimpleCIL+MIST and RanPAC+MIST of one seed tune once,
while a learner that moves the backbone (SLCA) or tunes it itself (finetune) gets its own
entries. A damaged entry is deleted and tuned again (one warning), never used.
"""

from __future__ import annotations

from pathlib import Path

import jax
import orbax.checkpoint as ocp
from absl import logging
from flax.traverse_util import flatten_dict

from mist_jax.infra.checkpoint import (RunCheckpointer, array_digests, config_fingerprint,
                                       to_host, verify)


class TunedBackboneCache:
    """The entries live in ``<directory>/<fingerprint>/<digest>/<task>`` (orbax):
    ``config_fingerprint`` of the config without ``learner`` (the caller adds the split's
    digest to it), and the caller's ``RunState.digest`` of the tuning settings and the starting
    params and bookkeeping. Each entry's record holds the SHA-256 of its arrays, checked on load.

    Args:
      directory: the cache folder (``config.mist.cache_dir``; created if missing).
      config: the run's config as a plain dict.
    """

    def __init__(self, directory: str | Path, config: dict):
        keyed = {k: v for k, v in config.items() if k != "learner"}
        self.fingerprint = config_fingerprint(keyed)
        self._root = Path(directory).absolute() / self.fingerprint
        self._managers: dict[str, ocp.CheckpointManager] = {}
        self._config = keyed

    def _manager(self, digest: str) -> ocp.CheckpointManager:
        if digest not in self._managers:
            self._managers[digest] = ocp.CheckpointManager(
                self._root / digest, options=ocp.CheckpointManagerOptions(
                    create=True, enable_async_checkpointing=False),
                item_handlers={"state": ocp.StandardCheckpointHandler(),
                               "record": ocp.JsonCheckpointHandler()})
        manager = self._managers[digest]
        manager.reload()
        return manager

    def load(self, task: int, digest: str) -> tuple[dict, dict] | None:
        """``(state, record)`` of ``task`` started from ``digest`` (state: nested dicts of
        numpy arrays as saved; record: as given to ``save``), or None when no run saved it or
        the entry is damaged (unreadable or not the bytes written: it is deleted, with a
        warning naming it, and the caller tunes again)."""
        manager = self._manager(digest)
        if task not in manager.all_steps():
            return None
        try:
            record = RunCheckpointer._restore(manager, task, "record", ocp.args.JsonRestore)
            state = RunCheckpointer._restore(manager, task, "state", lambda: (
                ocp.args.StandardRestore(RunCheckpointer._numpy_target(manager, task))))
            verify(state, record, manager.directory / str(task), "it is tuned again")
        except ValueError as e:
            logging.warning("Tuning cache entry %s is damaged; deleting it and tuning task %d "
                            "again (%s)", manager.directory / str(task), task, e)
            manager.delete(task)
            return None
        return state, record

    def save(self, task: int, digest: str, state: dict, record: dict) -> None:
        """Store task ``task``'s tuned state (nested dicts of arrays) and its JSON ``record``
        (MIST's task log, its step rows, its seconds) under ``digest``; a no-op when another
        run stored it."""
        manager = self._manager(digest)
        if task in manager.all_steps():
            return
        state = jax.tree_util.tree_map(to_host, state)
        try:
            manager.save(task, args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), record=ocp.args.JsonSave(dict(
                    record, config=self._config,
                    array_sha256=array_digests(flatten_dict(state, sep="/"))))))
            manager.wait_until_finished()
        except Exception:  # pylint: disable=broad-except
            manager.reload()
            if task not in manager.all_steps():
                raise
            # Another run (a parallel study cell) stored the same entry first: keep it.

    def close(self) -> None:
        for manager in self._managers.values():
            manager.close()
