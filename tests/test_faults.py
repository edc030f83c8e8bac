"""Fault injection: kill -9 at seeded random moments of the smoke run (and inside a checkpoint
write), re-run the same command, and get the uninterrupted run's results and final parameters
bitwise, with every event logged once."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
KILLS = 10
TIMING = {"seconds", "images_per_second", "versions"}


def _cmd(workdir: Path) -> list[str]:
    return [sys.executable, "-m", "mist_jax.main", "--config", "configs/default.py:smoke",
            "--config.compare_baseline=False", "--workdir", str(workdir)]


def _env() -> dict:
    return dict(os.environ, JAX_PLATFORMS="cpu")


def _finish(workdir: Path) -> None:
    done = subprocess.run(_cmd(workdir), cwd=ROOT, env=_env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]


def _strip(x):
    if isinstance(x, dict):
        return {k: _strip(v) for k, v in x.items() if k not in TIMING}
    if isinstance(x, list):
        return [_strip(v) for v in x]
    return x


def _outcome(workdir: Path):
    """(results without wall times, final checkpoint arrays, event keys)."""
    from mist_jax.checkpoint import RunCheckpointer

    run = workdir / "mist"
    results = _strip(json.loads((run / "results.json").read_text()))
    config = json.loads((run / "config.json").read_text())
    ckpt = RunCheckpointer(run / "checkpoints", config)
    state, _ = ckpt.restore()
    ckpt.close()
    events = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    keys = [(e["event"], e.get("task"), e.get("step")) for e in events]
    return results, jax.tree.leaves(state), keys


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("faults") / "reference"
    t0 = time.perf_counter()
    _finish(workdir)
    return _outcome(workdir), time.perf_counter() - t0


def _assert_same(got, want):
    (r1, s1, e1), (r2, s2, e2) = got, want
    assert r1 == r2
    assert len(s1) == len(s2) and all(np.array_equal(a, b) for a, b in zip(s1, s2))
    assert len(e1) == len(set(e1)), "an event was logged twice"
    assert sorted(e1) == sorted(e2)


@pytest.mark.slow
def test_kill_9_anywhere_then_resume_is_bitwise_equal(reference, tmp_path):
    (want, seconds) = reference
    rng = np.random.default_rng(2026)
    for k, delay in enumerate(rng.uniform(0.1, 1.0, KILLS) * seconds):
        workdir = tmp_path / f"kill{k}"
        proc = subprocess.Popen(_cmd(workdir), cwd=ROOT, env=_env(),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        _finish(workdir)
        _assert_same(_outcome(workdir), want)


@pytest.mark.slow
def test_kill_9_during_a_checkpoint_write_then_resume_is_bitwise_equal(reference, tmp_path):
    want, _ = reference
    workdir = tmp_path / "in_save"
    ckpts = workdir / "mist" / "checkpoints"
    proc = subprocess.Popen(_cmd(workdir), cwd=ROOT, env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while proc.poll() is None:  # orbax writes each step to a temporary folder first
        if ckpts.is_dir() and any("tmp" in p.name for p in ckpts.iterdir()):
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.005)
    proc.wait()
    _finish(workdir)
    _assert_same(_outcome(workdir), want)
