"""The benchmark scripts run on tiny shapes and print the tables docs/results.md and docs/benchmarks.md quote.

Slow-ish (each script compiles several programs); they keep benchmarks/ from rotting.
"""

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(script, *args):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


@pytest.mark.slow
def test_throughput_table_has_a_row_per_device_count_and_consistent_mfu():
    peak = 0.001  # TFLOP/s per device: a made-up peak, so the MFU columns are filled on CPU
    out = _run("throughput.py", "--model", "tiny", "--devices", "1,2", "--fsdp", "1",
               "--steps", "1", "--peak-tflops", str(peak))
    rows = [l for l in out.splitlines() if re.match(r"\| \d+ \|", l)]
    assert [r.split("|")[1].strip() for r in rows] == ["1", "2"]
    for r in rows:
        cells = [c.strip() for c in r.strip("|").split("|")]
        devices, mesh = int(cells[0]), cells[1]
        scoring, step, feats, tflops = map(float, cells[2:6])
        assert mesh == f"{devices} x 1"
        assert min(scoring, step, feats, tflops) > 0
        # MFU = FLOP/s / (devices x peak): the step MFU column follows from the TFLOP/s one.
        # Up to print rounding: TFLOP/s has 3 decimals (+-0.0005), MFU one decimal of a percent.
        mfu = float(cells[6].rstrip("%")) / 100
        tol = 0.0005 / (devices * peak) + 0.0005
        assert abs(mfu - tflops / (devices * peak)) <= tol, (mfu, tflops, devices)


@pytest.mark.slow
def test_sparse_step_table_lists_dense_mist_and_scoring():
    out = _run("sparse_step.py", "--image-size", "32", "--batch", "4", "--steps", "1",
               "--width", "32", "--depth", "2", "--heads", "2", "--mlp", "64", "--patch", "8")
    names = ("dense", "mist reference", "mist strict", "scoring")
    for name in names:
        line = next(l for l in out.splitlines() if l.startswith(name))
        assert float(line.split()[-4]) > 0  # median ms
    dense = next(l for l in out.splitlines() if l.startswith("dense"))
    assert "1.00x" in dense


def test_slca_drift_table_has_zero_drift_on_the_task_just_learned():
    out = _run("slca_drift.py", "--smoke", "--tasks", "2")
    rows = [[c.strip() for c in l.strip("|").split("|")] for l in out.splitlines()
            if re.match(r"\| \d+ \| \d+ \|", l)]
    assert [(int(r[0]), int(r[1])) for r in rows] == [(0, 0), (1, 0), (1, 1)]
    for after, task, head, stale, fresh, drift, spread in rows:
        assert 0 <= float(head) <= 100 and float(spread) > 0
        if after == task:  # the statistics were just measured: nothing has drifted yet
            assert float(drift) == 0 and stale == fresh


@pytest.mark.slow
def test_learner_wall_table_splits_each_run_into_its_phases(tmp_path):
    out = _run("learner_wall.py", "--smoke", "--learners", "simplecil", "--workdir",
               str(tmp_path))
    rows = [[c.strip() for c in l.strip("|").split("|")] for l in out.splitlines()
            if l.startswith("| simplecil |")]
    assert [r[1] for r in rows] == ["on", "off", "on", "off"]  # each row, then the table
    for _, mist, wall, tune, train, evaluation, average, last in rows:
        wall, tune, train, evaluation = map(float, (wall, tune, train, evaluation))
        assert (tune > 0) == (mist == "on") and train > 0 and evaluation > 0
        assert tune + train + evaluation <= wall
        assert 0 <= float(average) <= 100 and 0 <= float(last) <= 100
    assert (tmp_path / "simplecil_alone" / "baseline" / "results.json").is_file()


def test_plan_table_gives_every_accelerator_a_verdict_and_an_estimate(tmp_path):
    out_json = tmp_path / "plan.json"
    out = _run("plan_table.py", "--learners", "simplecil", "--dtypes", "bfloat16", "--remat",
               "on", "--meshes", "1", "--json", str(out_json))
    row = next(l for l in out.splitlines() if l.startswith("| simplecil | bfloat16 | on | 1 |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert len(cells) == 6 + 8 and set(cells[6:]) <= {"yes", "no"}
    # The same memory need: a 32 GiB v6e holds whatever a 16 GiB v5e holds.
    fits = dict(zip(["tpu_v2", "tpu_v3", "tpu_v5e", "tpu_v6e"], cells[6:10]))
    assert not (fits["tpu_v5e"] == "yes" and fits["tpu_v6e"] == "no")
    import json
    (result,) = json.loads(out_json.read_text())
    hours = {a: v["estimated_seconds"]["run"] for a, v in result["verdicts"].items()}
    # bfloat16 at the same MFU: time scales with 1 / peak (H100 989 vs A100 312 TFLOP/s).
    assert hours["a100_40"] / hours["h100"] == pytest.approx(989 / 312, rel=1e-6)


@pytest.mark.slow
def test_device_check_runs_every_section_at_tiny_shapes(tmp_path):
    out_json = tmp_path / "device_check.json"
    _run("device_check.py", "--tiny", "--json", str(out_json))
    import json
    out = json.loads(out_json.read_text())
    assert set(out["seconds"]) == {"devices", "dry_run", "throughput", "input", "run"}
    assert not any("error" in out[k] for k in ("dry_run", "input", "run"))
    assert out["devices"]["backend"] == "cpu" and out["devices"]["count"] >= 1
    names = {p["name"] for p in out["dry_run"]["programs"]}
    assert {"mist scoring step", "mist tuning step", "features"} <= names
    assert out["throughput"][0]["step"] > 0
    assert out["input"]["identical"] is True and out["input"]["supply"]["grain_w1"] > 0
    assert out["run"]["tasks"] == 2 and len(out["run"]["top1_curve"]) == 2
