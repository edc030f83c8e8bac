"""What a resumed run must share bitwise with an uninterrupted one (test_faults, test_in_task):
its results without wall times, its final checkpoint's arrays, and its event keys."""

import json
from pathlib import Path

import jax
import numpy as np

from mist_jax.infra.checkpoint import RunCheckpointer

#: Entries that differ between identical runs: wall times.
TIMING = frozenset({"seconds", "tune_seconds", "learner_seconds", "eval_seconds",
                    "images_per_second", "step_seconds", "input_wait_seconds",
                    "checkpoint_seconds", "timing"})


def strip(x, ignore=TIMING):
    """``x`` (nested dicts / lists) without the dict keys in ``ignore``."""
    if isinstance(x, dict):
        return {k: strip(v, ignore) for k, v in x.items() if k not in ignore}
    if isinstance(x, list):
        return [strip(v, ignore) for v in x]
    return x


def outcome(run_dir: Path, ignore=TIMING):
    """(results.json without ``ignore`` keys, final checkpoint leaves, [(event, task, step)])."""
    results = strip(json.loads((run_dir / "results.json").read_text()), ignore)
    ckpt = RunCheckpointer(run_dir / "checkpoints",
                           json.loads((run_dir / "config.json").read_text()))
    state, _ = ckpt.restore()
    ckpt.close()
    events = [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return results, jax.tree.leaves(state), [(e["event"], e.get("task"), e.get("step"))
                                             for e in events]


def assert_same(got, want):
    """Equal results, bitwise-equal arrays, every event once and the same events."""
    (r1, s1, e1), (r2, s2, e2) = got, want
    assert r1 == r2
    assert len(s1) == len(s2) and all(np.array_equal(a, b) for a, b in zip(s1, s2))
    assert len(e1) == len(set(e1)), "an event was logged twice"
    assert sorted(e1) == sorted(e2)
