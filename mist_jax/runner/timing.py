"""Where a run's time goes: per task, the seconds in jitted steps, waiting for batches and
writing checkpoints, next to the wall time of its phases (MIST, learner, evaluation).

Every loop blocks on its step (``infra/loop.py``) and feature passes read each batch's
result, so the time between two batches of an iterator (``Inputs.seconds[*_busy]``) is the
step's own (its first call includes compiling or loading it from the cache), and the time
waiting for a batch (``*_wait``) is input the step did not hide. In-task checkpoints happen
between batches: they are taken out of the steps. Whatever is left (selection and
bookkeeping, the learners' host-side fits, metrics, logs) is ``other``.
"""

from __future__ import annotations

import contextlib
import time

#: Per-task log keys of this module (wall times: they differ between identical runs).
KEYS = ("step_seconds", "input_wait_seconds", "checkpoint_seconds")


class Clock:
    """The run's time counters: ``inputs.seconds`` (``runner.inputs.Inputs``) and the
    seconds spent in checkpoints (``checkpointing``)."""

    def __init__(self, inputs):
        self.inputs, self.checkpoint, self.end_checkpoints = inputs, 0.0, 0.0

    @contextlib.contextmanager
    def checkpointing(self, end_of_task: bool = False):
        """Count the block as checkpoint time (``end_of_task``: the task's own checkpoint,
        written after its log is final, so counted for the run only)."""
        start = time.perf_counter()
        try:
            yield
        finally:
            seconds = time.perf_counter() - start
            if end_of_task:
                self.end_checkpoints += seconds
            else:
                self.checkpoint += seconds

    def mark(self) -> dict:
        """The counters now (``since`` takes the difference)."""
        return dict(self.inputs.seconds, checkpoint=self.checkpoint)

    def since(self, mark: dict) -> dict:
        """``{"step_seconds", "input_wait_seconds", "checkpoint_seconds"}`` since ``mark``."""
        now = self.mark()
        delta = {k: now[k] - mark[k] for k in now}
        return {"step_seconds": delta["train_busy"] + delta["test_busy"] - delta["checkpoint"],
                "input_wait_seconds": delta["train_wait"] + delta["test_wait"],
                "checkpoint_seconds": delta["checkpoint"]}


def summary(tasks: list[dict], end_checkpoints: float = 0.0) -> dict:
    """The run's time by kind, from its tasks' logs: ``seconds`` (wall, tasks), ``steps``,
    ``input_wait``, ``checkpoint`` (in-task plus ``end_checkpoints``), ``other``, and the
    phases ``tune``, ``learner``, ``evaluation``; ``outside_steps`` is the fraction of
    ``seconds`` not in steps. Tasks resumed from a checkpoint count only this process's part."""
    total = lambda key: sum(float(t.get(key, 0.0)) for t in tasks)
    seconds = total("seconds") + end_checkpoints
    out = {"seconds": seconds, "steps": total("step_seconds"),
           "input_wait": total("input_wait_seconds"),
           "checkpoint": total("checkpoint_seconds") + end_checkpoints,
           "tune": total("tune_seconds"), "learner": total("learner_seconds"),
           "evaluation": total("eval_seconds")}
    out["other"] = seconds - out["steps"] - out["input_wait"] - out["checkpoint"]
    out["outside_steps"] = 1.0 - out["steps"] / seconds if seconds > 0 else 0.0
    return out


def line(timing: dict) -> str:
    """One line for the printed table: the run's seconds and their split in percent."""
    s = max(timing["seconds"], 1e-9)
    pct = lambda k: f"{100 * timing[k] / s:.0f}%"
    return (f"{timing['seconds']:.0f} s: steps {pct('steps')}, input wait {pct('input_wait')}, "
            f"checkpoints {pct('checkpoint')}, other {pct('other')} (MIST {timing['tune']:.0f} s, "
            f"learner {timing['learner']:.0f} s, evaluation {timing['evaluation']:.0f} s)")


@contextlib.contextmanager
def timed(phases: dict, name: str):
    """``phases[name]``: this process's seconds in the block (not a resumed part's)."""
    start = time.perf_counter()
    try:
        yield
    finally:
        phases[name] = time.perf_counter() - start
