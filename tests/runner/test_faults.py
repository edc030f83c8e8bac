"""Fault injection: kill -9 at seeded random moments of the smoke run (with in-task
checkpoints every 2 step boundaries, and inside a checkpoint write), SIGTERM / SIGINT mid-task;
re-run the same command, and get the uninterrupted run's results and final parameters bitwise,
with every event logged once."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from support.run_outcome import TIMING as WALL, assert_same, outcome  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
KILLS = 10
# Differ between identical runs; checkpoint_every_steps (result-neutral) because a run killed
# after it wrote results.json keeps the config it finished with (2) where the reference has 0.
TIMING = WALL | {"versions", "checkpoint_every_steps"}


def _cmd(workdir: Path, every: int = 0) -> list[str]:
    # checkpoint_every_steps is result-neutral: a run with in-task checkpoints resumes into
    # the same results as the reference without them.
    return [sys.executable, "-m", "mist_jax.main", "--config", "configs/default.py:smoke",
            "--config.compare_baseline=False", "--config.mist.log_every=1",
            f"--config.checkpoint_every_steps={every}", "--workdir", str(workdir)]


def _env() -> dict:
    # Its own compilation cache: JAX writes entries in place, so a process killed mid-write
    # may leave a truncated one (read back as a warning and a recompile), kept out of the
    # caches of tests that check the CLI's output.
    xla = Path(os.environ["MIST_JAX_CACHE"]) / "xla_killed"
    return dict(os.environ, JAX_PLATFORMS="cpu", MIST_JAX_XLA_CACHE=str(xla))


def _finish(workdir: Path, every: int = 0) -> str:
    done = subprocess.run(_cmd(workdir, every), cwd=ROOT, env=_env(), capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stderr


def _start(workdir: Path, every: int = 0, **io) -> subprocess.Popen:
    io = io or dict(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return subprocess.Popen(_cmd(workdir, every), cwd=ROOT, env=_env(), **io)


def _signal_when(proc: subprocess.Popen, ready, sig: int, poll: float = 0.005) -> None:
    """Send ``sig`` to ``proc`` as soon as ``ready()`` holds (nothing if it exits first)."""
    while proc.poll() is None:
        if ready():
            proc.send_signal(sig)
            return
        time.sleep(poll)


def _kill_9_then_resume(workdir: Path, ready, every: int = 0):
    """kill -9 a run once ``ready()`` holds, re-run the same command; the finished outcome."""
    proc = _start(workdir, every)
    _signal_when(proc, ready, signal.SIGKILL)
    proc.wait()
    _finish(workdir)
    return _outcome(workdir)


def _outcome(workdir: Path):
    return outcome(workdir / "mist", TIMING)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """(outcome, seconds of a run with the compilation cache warm: the kill window)."""
    root = tmp_path_factory.mktemp("faults")
    _finish(root / "reference")  # compiles, filling the cache the killed runs load from
    t0 = time.perf_counter()
    _finish(root / "warm")
    seconds = time.perf_counter() - t0
    want = _outcome(root / "reference")
    assert_same(_outcome(root / "warm"), want)  # programs loaded from the cache: same run
    return want, seconds


@pytest.mark.slow
def test_kill_9_anywhere_then_resume_is_bitwise_equal(reference, tmp_path):
    (want, seconds) = reference
    rng = np.random.default_rng(2026)
    for k, delay in enumerate(rng.uniform(0.1, 1.0, KILLS) * seconds):
        end = time.perf_counter() + delay
        got = _kill_9_then_resume(tmp_path / f"kill{k}", lambda: time.perf_counter() >= end,
                                  every=2)
        assert_same(got, want)


@pytest.mark.slow
def test_kill_9_during_a_checkpoint_write_then_resume_is_bitwise_equal(reference, tmp_path):
    want, _ = reference
    workdir = tmp_path / "in_save"
    ckpts = workdir / "mist" / "checkpoints"
    # orbax writes each step to a temporary folder first
    writing = lambda: ckpts.is_dir() and any("tmp" in p.name for p in ckpts.iterdir())
    assert_same(_kill_9_then_resume(workdir, writing), want)


@pytest.mark.slow
def test_ctrl_c_mid_task_stops_at_a_step_with_a_checkpoint_and_one_line(reference, tmp_path):
    # (SIGTERM, the same handler: tests/runner/test_train.py.)
    want, _ = reference
    workdir = tmp_path / "signal"
    proc = _start(workdir, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    events = workdir / "mist" / "metrics.jsonl"
    # the first MIST step of task 0 is logged: mid-task
    _signal_when(proc, lambda: events.is_file() and '"mist_step"' in events.read_text(),
                 signal.SIGINT, poll=0.01)
    _, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr
    last = [l for l in stderr.splitlines() if "Stopped in" in l]
    assert len(last) == 1 and "after an in-task checkpoint" in last[0], stderr[-3000:]
    assert "Re-run the same command to resume" in last[0]
    resumed = _finish(workdir)
    assert "Resumed" in resumed  # inside task 0, or at task 1 if the signal came late
    assert_same(_outcome(workdir), want)
