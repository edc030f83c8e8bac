"""In-task checkpoints: a run stopped (or crashed) at a step boundary inside a task resumes
there, not at the task's start, and ends bitwise equal to a run never stopped."""


import pytest

from support.run_outcome import TIMING, assert_same, outcome  # noqa: E402
from support.runs import StopAt, smoke  # noqa: E402

from mist_jax.infra import interrupt  # noqa: E402
from mist_jax.runner import train

# Result-neutral: may differ from the reference.
NEUTRAL = TIMING | {"checkpoint_every_steps", "workers"}


def _config():
    # SimpleCIL with drift compensation: task 1 also carries the pre-tuning features.
    return smoke(**{"learner.simplecil.drift_compensation": True, "mist.log_every": 1})


@pytest.mark.parametrize("workers", [0, 2])
def test_stops_and_a_crash_inside_tasks_resume_there_bitwise(tmp_path, workers):
    train.Run(_config(), tmp_path / "ref", progress=False).run()
    want = outcome(tmp_path / "ref", NEUTRAL)
    # Smoke task: 4 scoring batches (boundaries 1-4) and 4 MIST steps (5-8), then the check
    # after the task. Each entry: (stop, where the next process must resume).
    wd = tmp_path / "stopped"
    cfg = _config()
    with cfg.unlocked():
        cfg.checkpoint_every_steps = 3  # result-neutral: same fingerprint as the reference
        cfg.data.workers = workers  # grain worker processes build the batches (also neutral)
    script = [
        (StopAt(2), {"phase": "score", "epoch": 0, "batch": 2}),
        (StopAt(4), {"phase": "tune", "epoch": 1, "batch": 2}),  # boundary 6
        (StopAt(3), None),  # after task 0 (its task checkpoint; no in-task one left)
        (StopAt(7, crash=True), {"phase": "tune", "epoch": 1, "batch": 2}),  # n=6 of task 1
    ]
    for stop, resume_at in script:
        run = train.Run(cfg, wd, progress=False, stop=stop)
        with pytest.raises((interrupt.Interrupted, RuntimeError)):
            run.run()
        again = train.Run(cfg, wd, progress=False)
        got = again._in_task and again._in_task.record["position"]
        assert got == resume_at
        again.events.close()
        again.ckpt.close()
        again._lock.release()
    train.Run(cfg, wd, progress=False).run()
    assert_same(outcome(wd, NEUTRAL), want)
    assert not any((wd / "checkpoints_in_task").iterdir())  # deleted after the last task


def test_stop_message_names_the_task_and_phase(tmp_path):
    run = train.Run(smoke(), tmp_path / "r", progress=False, stop=StopAt(6))
    with pytest.raises(interrupt.Interrupted,
                       match=r"during task 0 \(tune phase, epoch 1, batch 2\) after an in-task "
                             r"checkpoint\. Re-run the same command to resume"):
        run.run()
