"""runner/timing.py: a run's seconds split into steps, input wait, checkpoints and the rest."""

import json

import pytest

from mist_jax.runner import timing, train
from support.runs import smoke


def test_summary_adds_the_tasks_and_the_rest_is_other():
    tasks = [{"seconds": 10.0, "step_seconds": 6.0, "input_wait_seconds": 1.0,
              "checkpoint_seconds": 0.5, "tune_seconds": 7.0, "learner_seconds": 2.0,
              "eval_seconds": 1.0},
             {"seconds": 20.0, "step_seconds": 15.0, "input_wait_seconds": 0.0,
              "checkpoint_seconds": 0.0, "tune_seconds": 15.0, "learner_seconds": 3.0,
              "eval_seconds": 2.0}]
    out = timing.summary(tasks, end_checkpoints=2.0)
    assert out["seconds"] == 32.0 and out["steps"] == 21.0 and out["checkpoint"] == 2.5
    assert out["other"] == pytest.approx(32.0 - 21.0 - 1.0 - 2.5)
    assert out["outside_steps"] == pytest.approx(11.0 / 32.0)
    assert (out["tune"], out["learner"], out["evaluation"]) == (22.0, 5.0, 3.0)
    assert timing.line(out).startswith("32 s: steps 66%, input wait 3%, checkpoints 8%")


def test_a_run_records_where_its_time_went(tmp_path):
    cfg = smoke(**{"checkpoint_every_steps": 2})
    results = train.Run(cfg, tmp_path, progress=False).run()
    t = results["timing"]
    assert t["steps"] > 0 and t["checkpoint"] > 0 and t["input_wait"] >= 0
    assert t["steps"] + t["input_wait"] + t["checkpoint"] <= t["seconds"] + 1e-6
    for task in results["tasks"]:
        assert 0 < task["step_seconds"] < task["seconds"]
        assert task["checkpoint_seconds"] > 0  # in-task checkpoints every 2 boundaries
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["timing"]["seconds"] == pytest.approx(t["seconds"])
