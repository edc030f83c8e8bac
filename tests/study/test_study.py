"""Studies (mist_jax/study): the grid, the statistics against hand-computed values, and the
smoke study end to end (resume skips finished cells, --list / --cell / --aggregate)."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import ml_collections
import numpy as np
import pytest

from mist_jax.infra import config_files

from mist_jax import study as st
from mist_jax.study import report, stats

ROOT = Path(__file__).resolve().parents[2]
SMOKE = "configs/studies/smoke.py"


def _module(path):
    return config_files.load_module(ROOT / path)


def _load(path):
    return _module(path).get_config()


# ------------------------------------------------------------------ statistics, by hand
def test_summary_matches_the_hand_computed_t_interval():
    s = stats.summary([1.0, 2.0, 3.0, 4.0])
    # mean 2.5; std = sqrt(5/3) = 1.2910; t_{0.975, 3} = 3.1824 (printed t tables);
    # half width = 3.1824 * 1.2910 / 2 = 2.0543.
    assert s["n"] == 4 and s["mean"] == 2.5
    assert s["std"] == pytest.approx(1.290994, abs=1e-6)
    assert s["low"] == pytest.approx(0.4457, abs=1e-3)
    assert s["high"] == pytest.approx(4.5543, abs=1e-3)
    one = stats.summary([7.0])
    assert one["mean"] == 7.0 and math.isnan(one["std"]) and math.isnan(one["low"])


def test_paired_tests_on_a_small_fixed_table():
    d = stats.paired([1.0, 2.0, 3.0, 4.0, 10.0])
    # mean 4, std sqrt(50/4) = 3.5355, t = 4 / (3.5355 / sqrt 5) = 2.5298 with 4 dof: between
    # t_{0.95} = 2.132 and t_{0.975} = 2.776, so the two-sided p is between 0.05 and 0.10.
    assert d["mean"] == 4.0 and d["std"] == pytest.approx(math.sqrt(12.5))
    assert 0.05 < d["t_p"] < 0.10
    # Wilcoxon, exact: all 5 differences positive, the most extreme of 2^5 sign patterns:
    # two-sided p = 2 / 32.
    assert d["wilcoxon_p"] == pytest.approx(2 / 32)
    same = stats.paired([0.0, 0.0, 0.0])
    assert same["mean"] == 0 and math.isnan(same["t_p"]) and math.isnan(same["wilcoxon_p"])


def test_differences_pair_by_seed_and_order():
    rows = [{"variant": v, "seed": s, "order": o, "m": x} for v, s, o, x in [
        ("a", 0, 1993, 10.0), ("b", 0, 1993, 7.0), ("a", 1, 1, 20.0), ("b", 1, 1, 18.0),
        ("a", 2, 2, 30.0),  # no partner in b: left out
        ("b", 3, 3, 1.0)]]
    d = stats.differences(rows, "a", "b", metrics=("m",))
    assert d["pairs"] == 2 and d["m"]["mean"] == pytest.approx(2.5)  # (3 + 2) / 2
    with pytest.raises(ValueError, match="share no finished"):
        stats.differences(rows, "a", "c", metrics=("m",))


# ------------------------------------------------------------------ the grid
def test_cells_and_run_configs_of_the_smoke_study():
    study = _load(SMOKE)
    cells = st.cells(study)
    assert [(c.index, c.variant, c.seed, c.order) for c in cells] == [
        (0, "simplecil", 0, 1993), (1, "simplecil", 1, 1),
        (2, "simplecil_mist", 0, 1993), (3, "simplecil_mist", 1, 1)]
    cfg = st.run_config(study, "simplecil", 1, 1)
    assert cfg.mist.enabled is False and cfg.seed == 1 and cfg.data.class_order_seed == 1
    assert cfg.compare_baseline is False and cfg.model.source == "tiny"
    assert st.run_config(study, "simplecil_mist", 0, 1993).mist.enabled is True
    assert st.parse_overrides("learner.name=ranpac,mist.select_rate=0.05") == {
        "learner.name": "ranpac", "mist.select_rate": 0.05}
    assert st.parse_overrides("learner.slca.milestones=(2, 3),x=[1,2],y=(4,),z=a") == {
        "learner.slca.milestones": (2, 3), "x": [1, 2], "y": (4,), "z": "a"}


def test_bad_study_configs_are_named():
    study = _load(SMOKE)
    with study.unlocked():
        study.variants["typo"] = "mist.selct_rate=0.5"
        study.compare = (("nope", "simplecil"),)
        study.repeats = ((0, 1), (0, 1))
    with pytest.raises(ValueError) as e:
        st.check_study(study)
    msg = str(e.value)
    assert "mist.selct_rate is not a key" in msg and "'nope'" in msg and "twice" in msg


def test_a_failing_cell_is_reported_and_the_others_go_on(tmp_path):
    from mist_jax.study.__main__ import run_cells

    study = _load(SMOKE)
    with study.unlocked():
        study.variants = ml_collections.ConfigDict({
            "a_broken": f"data.name='folder:{tmp_path / 'nowhere'}'",
            "b_broken": "data.name='no_such_dataset'"})
        study.repeats = ((0, 1993),)
        study.compare = ()
    failed = run_cells(study, str(tmp_path / "s")).failed
    assert [name for name, _ in failed] == ["a_broken/seed0_order1993", "b_broken/seed0_order1993"]
    assert "FileNotFoundError" in failed[0][1] and "Unknown dataset" in failed[1][1]


# ------------------------------------------------------------------ end to end
@pytest.mark.slow
def test_smoke_study_resumes_only_missing_cells_and_aggregates(tmp_path, caplog):
    from mist_jax.study.__main__ import run_cells

    study, wd = _load(SMOKE), tmp_path / "study"
    assert run_cells(study, str(wd), only=2).failed == []  # a cluster task: one cell
    assert [st.is_finished(wd, c) for c in st.cells(study)] == [False, False, True, False]
    done = wd / "simplecil_mist/seed0_order1993/results.json"
    mtime = done.stat().st_mtime_ns
    with caplog.at_level("INFO"):
        assert run_cells(study, str(wd)).failed == []  # re-run after "a kill": missing cells
    assert done.stat().st_mtime_ns == mtime  # the finished cell was not run again
    assert "cell 2 simplecil_mist/seed0_order1993: finished, skipped" in caplog.text
    assert all(st.is_finished(wd, c) for c in st.cells(study))
    result = report.aggregate(study, wd)
    rows = report.collect(study, wd)
    assert result["finished"] == 4 and result["missing"] == []
    # The table's numbers are the mean / std of the cells' own results.json values.
    for variant in ("simplecil", "simplecil_mist"):
        vals = [json.loads((wd / variant / n / "results.json").read_text())["average_accuracy"]
                for n in ("seed0_order1993", "seed1_order1")]
        got = result["variants"][variant]["average_accuracy"]
        assert got["mean"] == pytest.approx(np.mean(vals))
        assert got["std"] == pytest.approx(np.std(vals, ddof=1))
    diff = result["differences"]["simplecil_mist - simplecil"]
    assert diff["pairs"] == 2
    by = {(r["variant"], r["seed"]): r["average_accuracy"] for r in rows}
    assert diff["average_accuracy"]["mean"] == pytest.approx(np.mean(
        [by[("simplecil_mist", s)] - by[("simplecil", s)] for s in (0, 1)]))
    for name in ("study.csv", "study.md", "study.json", "study_curves.png",
                 "study_differences.png"):
        assert (wd / name).is_file() and (wd / name).stat().st_size > 0, name
    assert "2 pairs" in (wd / "study.md").read_text()

    # The CLI: --list shows every cell finished; --aggregate rewrites the same numbers.
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    base = [sys.executable, "-m", "mist_jax.study", "--config", SMOKE, "--workdir", str(wd)]
    listed = subprocess.run(base + ["--list"], cwd=ROOT, env=env, capture_output=True,
                            text=True)
    assert listed.returncode == 0, listed.stderr[-2000:]
    assert [l.split("\t")[-1] for l in listed.stdout.splitlines()] == ["finished"] * 4
    before = json.loads((wd / "study.json").read_text())
    again = subprocess.run(base + ["--aggregate"], cwd=ROOT, env=env, capture_output=True,
                           text=True)
    assert again.returncode == 0, again.stderr[-2000:]
    assert json.loads((wd / "study.json").read_text()) == before
    assert "simplecil_mist - simplecil" in again.stdout


# ------------------------------------------------------------------ a study folder's safety
def _one_cell(study):
    with study.unlocked():
        study.variants = ml_collections.ConfigDict({"simplecil_mist": ""})
        study.repeats, study.compare = ((0, 1993),), ()
    return study


def _cli(wd, *extra, config=SMOKE, **kw):
    return subprocess.Popen([sys.executable, "-m", "mist_jax.study", "--config", str(config),
                             "--workdir", str(wd), *extra], cwd=ROOT, text=True,
                            env=dict(os.environ, JAX_PLATFORMS="cpu"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **kw)


def test_a_folder_holding_cells_of_another_config_is_refused(tmp_path):
    """A cell whose config.json records another config (here the select rate) stops the study
    before any cell runs or the table is written, naming the cell, the key and the fix."""
    from mist_jax.study.__main__ import run_cells

    study, wd = _load(SMOKE), tmp_path / "s"
    cell = st.cells(study)[3]  # simplecil_mist/seed1_order1
    old = st.run_config(study, cell.variant, cell.seed, cell.order).to_dict()
    old["mist"]["select_rate"] = 0.5
    (wd / cell.name).mkdir(parents=True)
    (wd / cell.name / "config.json").write_text(json.dumps(old))
    (wd / cell.name / "results.json").write_text("{}")
    with pytest.raises(ValueError, match=rf"{cell.name}: mist.select_rate: 0.5 -> .*new --workdir"):
        run_cells(study, str(wd))
    assert not (wd / "simplecil").exists()  # cell 0 was not started
    out, err = _cli(wd, "--aggregate").communicate(timeout=300)
    assert "mist.select_rate" in err and "Traceback" not in err and "Error" in err
    assert not (wd / "study.md").exists()


def test_aggregation_names_an_unreadable_cell_and_still_writes_the_table(tmp_path):
    study, wd = _load(SMOKE), tmp_path / "s"
    for i, cell in enumerate(st.cells(study)):
        (wd / cell.name).mkdir(parents=True)
        res = {"average_accuracy": 50.0 + i, "last_accuracy": 40.0, "forgetting": 5.0,
               "new_task_accuracy": 60.0, "tasks": [{"seconds": 60.0}], "top1_curve": [50.0]}
        (wd / cell.name / "results.json").write_text(json.dumps(res)[: 20 if i == 3 else None])
    result = report.aggregate(study, wd)
    assert result["finished"] == 3 and result["unreadable"] == [st.cells(study)[3].name]
    md = (wd / "study.md").read_text()
    assert md.startswith("3 of 4 cells finished (1 unreadable, left out: simplecil_mist/seed1")
    assert result["variants"]["simplecil"]["average_accuracy"]["mean"] == 50.5  # (50 + 51) / 2


def test_a_cell_another_process_runs_is_left_to_it_not_failed(tmp_path):
    from mist_jax.study.__main__ import run_cells

    study, wd = _one_cell(_load(SMOKE)), tmp_path / "s"
    cell_dir = wd / st.cells(study)[0].name
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from mist_jax.infra.lock import WorkdirLock; "
        f"lock = WorkdirLock({str(cell_dir)!r}); print('held', flush=True); time.sleep(120)")],
        cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        outcome = run_cells(study, str(wd))
    finally:
        holder.kill()
    assert outcome.failed == [] and outcome.busy == ["simplecil_mist/seed0_order1993"]
    assert not (cell_dir / "results.json").exists()


@pytest.mark.slow
def test_sigint_stops_the_running_cell_with_a_checkpoint_and_one_line(tmp_path):
    config = tmp_path / "one_cell.py"
    config.write_text(
        "from mist_jax.infra import config_files\n"
        f"smoke = config_files.load_module({str(ROOT / SMOKE)!r})\n"
        "def get_config():\n"
        "    c = smoke.get_config()\n"
        "    with c.unlocked():\n"
        "        c.variants = {'simplecil_mist': ''}\n"
        "        c.repeats, c.compare = ((0, 1993),), ()\n"
        "        c.base.mist.log_every = 1\n"  # every step's event: the signal lands in task 0
        "    return c\n")
    wd = tmp_path / "s"
    events = wd / "simplecil_mist" / "seed0_order1993" / "metrics.jsonl"
    proc = _cli(wd, config=config)
    deadline = time.time() + 300
    while (not events.exists() or '"mist_step"' not in events.read_text()) \
            and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err and "Re-run the same command to resume" in err
    assert any((wd / "simplecil_mist/seed0_order1993/checkpoints_in_task").iterdir())
    assert not (wd / "study.md").exists()


@pytest.mark.parametrize("name", ["smoke", "embedded_main", "embedded_ablation", "embedded_learners",
                                  "paper_imagenet_r"])
def test_shipped_studies_load_check_and_document_their_command(name):
    module = _module(f"configs/studies/{name}.py")
    study = module.get_config()
    st.check_study(study)
    assert f"python -m mist_jax.study --config configs/studies/{name}.py" in module.__doc__
    assert f"({len(st.cells(study))} cells)" in " ".join(module.__doc__.split())
    assert study.repeats[0][1] == 1993  # the authors' class order is the first repeat
    for variant, reference in study.compare:  # each comparison changes MIST, not the learner
        a, b = (st.run_config(study, v, 0, 1993) for v in (variant, reference))
        assert a.learner.name == b.learner.name and a.mist != b.mist, (variant, reference)


@pytest.mark.parametrize("learner", ["simplecil", "ranpac", "l2p", "dualprompt", "coda_prompt",
                                     "aper", "ease", "slca"])
def test_paper_study_cells_are_the_paper_configs(learner):
    """Each paper_imagenet_r cell with MIST is configs/paper.py's run of that learner (seed and
    class order aside); without MIST it differs only in mist.enabled."""
    study = _module("configs/studies/paper_imagenet_r.py").get_config()
    paper = _module("configs/paper.py").get_config(f"dataset=imagenet_r,learner={learner}")
    with_mist = st.run_config(study, f"{learner}_mist", 0, 1993)
    assert with_mist.to_dict() == paper.to_dict()
    alone = st.run_config(study, learner, 0, 1993).to_dict()
    alone["mist"]["enabled"] = True
    assert alone == paper.to_dict()


def test_the_default_jobs_table_says_one_run_and_which_seed():
    from mist_jax.runner import outputs

    res = {"top1_curve": [80.0, 70.0], "average_accuracy": 75.0, "last_accuracy": 70.0,
           "forgetting": 5.0, "new_task_accuracy": 77.5}
    table = outputs.summary_table({"mist": res, "baseline": res}, seed=0, order=1993)
    assert "one run (seed 0, class order seed 1993)" in table
    assert "python -m mist_jax.study" in table.splitlines()[-1]
