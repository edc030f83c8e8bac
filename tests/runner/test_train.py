"""The runner end to end on the smoke config (a tiny random ViT on real MNIST-5k images):
outputs, resume equality, config errors, and the CLI itself."""

import json
import re
import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from mist_jax.runner import train  # noqa: E402
from support.run_outcome import TIMING  # noqa: E402
from support.runs import smoke  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
METRIC_KEYS = {"acc_matrix", "top1_curve", "top5_curve", "average_accuracy", "last_accuracy",
               "forgetting", "new_task_accuracy"}


def test_run_writes_all_outputs_with_spec_metric_names(tmp_path):
    results = train.Run(smoke(), tmp_path / "mist", progress=False).run()
    wd = tmp_path / "mist"
    for name in ("config.json", "metrics.jsonl", "results.json", "acc_matrix.png",
                 "mask_coverage.png", "accuracy_curve.png"):
        assert (wd / name).is_file(), name
    assert any((wd / "tensorboard").iterdir())
    on_disk = json.loads((wd / "results.json").read_text())
    assert METRIC_KEYS <= on_disk.keys()
    acc = on_disk["acc_matrix"]
    assert [len(r) for r in acc] == [1, 2]  # row i holds tasks 0..i
    # Each top-1 is a per-image accuracy on 5 classes x 4 test images: a multiple of 5%.
    assert all(abs(a / 5 - round(a / 5)) < 1e-9 for r in acc for a in r)
    # After task 1 all 10 classes have 4 test images each: overall = mean of the two tasks.
    assert on_disk["top1_curve"][1] == pytest.approx(np.mean(acc[1]))
    assert on_disk["average_accuracy"] == pytest.approx(np.mean(on_disk["top1_curve"]))
    assert on_disk["forgetting"] == pytest.approx(acc[0][0] - acc[1][0])
    task = on_disk["tasks"][0]
    assert task["selected_fraction"] == pytest.approx(0.1, abs=0.01)
    assert 0 < task["updated_fraction"] <= 1 and len(task["mi_loss_per_epoch"]) == 1
    # The mask summary of the plots is in results.json: one value per block (tiny ViT: 2).
    assert {len(v) for v in task["block_selected"].values()} == {2}
    assert sum(task["score_share"]["blocks"]) + task["score_share"]["embed"] == pytest.approx(1)
    assert len(task["overlap_histogram"]) == 1  # task 0: nothing selected before
    assert len(on_disk["tasks"][1]["overlap_histogram"]) >= 1
    for t in on_disk["tasks"]:  # the phases' wall times fit in the task's
        phases = [t["tune_seconds"], t["learner_seconds"], t["eval_seconds"]]
        assert min(phases) > 0 and sum(phases) <= t["seconds"]
    assert any(k.endswith("attn/qkv/kernel") for k in task["coverage"])  # fused official unit
    assert results["last_accuracy"] == on_disk["top1_curve"][-1]
    events = [json.loads(l) for l in (wd / "metrics.jsonl").read_text().splitlines()]
    assert [e["task"] for e in events if e["event"] == "task_end"] == [0, 1]
    assert on_disk["backbone"]["name"] == "tiny" and on_disk["backbone"]["source"] is None
    assert re.fullmatch(r"[0-9a-f]{64}", on_disk["backbone"]["sha256"])


def test_backbone_sha256_names_the_weights_not_the_file_format(tmp_path):
    """The same weights from the seed and from a saved npz hash alike; one changed value does
    not. Expected digests are computed here with hashlib over (path, dtype, shape, bytes)."""
    import hashlib

    from mist_jax.models import pretrained
    from mist_jax.runner import build

    cfg = smoke()
    _, params, _ = build.build_backbone(cfg)
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    h = hashlib.sha256()
    for path, leaf in sorted(((jax.tree_util.keystr(p, simple=True, separator="/"), v)
                              for p, v in flat)):
        x = np.ascontiguousarray(leaf)
        h.update(f"{path}|{x.dtype.str}|{x.shape}|".encode() + x.tobytes())
    seeded = build.backbone_provenance(cfg, params)
    assert seeded == {"name": "tiny", "source": None, "sha256": h.hexdigest()}
    pretrained.save_npz(params, tmp_path / "tiny.npz")
    cfg_file = smoke(**{"model.source": str(tmp_path / "tiny.npz")})
    _, loaded, _ = build.build_backbone(cfg_file)
    from_file = build.backbone_provenance(cfg_file, loaded)
    assert from_file["sha256"] == seeded["sha256"]
    assert from_file["source"] == str((tmp_path / "tiny.npz").resolve())
    changed = jax.tree.map(np.array, loaded)
    changed["cls_token"].flat[0] += 1.0
    assert build.backbone_provenance(cfg_file, changed)["sha256"] != seeded["sha256"]


def test_resume_after_crash_is_bitwise_equal(tmp_path):
    cfg = smoke(**{"mist.sparsity": "strict"})
    full = train.Run(cfg, tmp_path / "full", progress=False).run()
    crashed = train.Run(cfg, tmp_path / "resumed", progress=False)
    crashed._task(0)  # the process dies after task 0's checkpoint
    del crashed
    resumed = train.Run(cfg, tmp_path / "resumed", progress=False)
    assert resumed.record["next_task"] == 1
    out = resumed.run()
    assert out["acc_matrix"] == full["acc_matrix"]
    assert out["tasks"][1]["mi_loss_per_epoch"] == full["tasks"][1]["mi_loss_per_epoch"]


def test_checkpoint_from_other_config_is_refused(tmp_path):
    run = train.Run(smoke(), tmp_path / "w", progress=False)
    run._task(0)
    with pytest.raises(ValueError, match="different config"):
        train.Run(smoke(**{"mist.select_rate": 0.05}), tmp_path / "w", progress=False)


def test_workdir_with_another_configs_results_is_refused_even_without_checkpoints(tmp_path):
    """Issue: with its checkpoints gone, a different config used to overwrite the workdir's
    results.json, config.json and metrics.jsonl. Now refused, naming the key; nothing changes."""
    import shutil

    wd = tmp_path / "w"
    train.Run(smoke(), wd, progress=False).run()
    # A finished run started again with a changed evaluation-only key keeps its results.json
    # and config.json as written: the numbers came from the old value, so nothing records it.
    kept = {n: (wd / n).read_bytes() for n in ("results.json", "config.json")}
    again = train.Run(smoke(**{"learner.eval_batch_size": 7}), wd, progress=False).run()
    assert {n: (wd / n).read_bytes() for n in kept} == kept
    assert again == json.loads(kept["results.json"])
    shutil.rmtree(wd / "checkpoints")
    before = {p.name: p.read_bytes() for p in wd.iterdir() if p.is_file()}
    with pytest.raises(ValueError, match=r"different config \(mist\.select_rate: 0\.1 -> 0\.05"):
        train.Run(smoke(**{"mist.select_rate": 0.05}), wd, progress=False)
    assert {p.name: p.read_bytes() for p in wd.iterdir() if p.is_file()} == before
    # result-neutral keys (here the evaluation batch) are no difference
    train.Run(smoke(**{"learner.eval_batch_size": 7}), wd, progress=False)


def test_missing_dataset_fails_fast_with_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="cifar100"):
        train.Run(smoke(**{"data.name": "cifar100", "data.data_dir": str(tmp_path)}),
                  tmp_path / "w", progress=False)


@pytest.mark.parametrize("key,value", [("mist.selection_units", "fused"),
                                       ("mist.freeze_rate", -0.5), ("data.transform", "carz")])
def test_bad_values_fail_before_any_work(tmp_path, key, value):
    with pytest.raises(ValueError, match=key.split(".")[1]):
        train.Run(smoke(**{key: value}), tmp_path / "w", progress=False)
    assert not (tmp_path / "w" / "checkpoints").exists()


def test_cli_runs_and_rejects_misspelt_keys(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    cmd = [sys.executable, "-m", "mist_jax.main", "--config", "configs/default.py:smoke",
           "--workdir", str(tmp_path / "cli")]
    bad = subprocess.run(cmd + ["--config.mist.selct_rate=0.05"], cwd=ROOT, env=env,
                         capture_output=True, text=True)
    assert bad.returncode != 0 and "selct_rate" in bad.stderr
    # A bad value: one line naming key, value and fix; no traceback unless asked for.
    bad = subprocess.run(cmd + ["--config.mist.drop_rate=1.0"], cwd=ROOT, env=env,
                         capture_output=True, text=True)
    assert bad.returncode == 1 and "mist.drop_rate=1.0" in bad.stderr
    assert "Traceback" not in bad.stderr and "--traceback" in bad.stderr
    bad = subprocess.run(cmd + ["--config.mist.drop_rate=1.0", "--traceback"], cwd=ROOT,
                         env=env, capture_output=True, text=True)
    assert bad.returncode == 1 and "Traceback" in bad.stderr
    ok = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr[-2000:]
    assert "average_accuracy" in ok.stdout and "baseline" in ok.stdout
    assert (tmp_path / "cli" / "mist" / "results.json").is_file()
    assert (tmp_path / "cli" / "baseline" / "results.json").is_file()
    assert (tmp_path / "cli" / "accuracy_curve.png").is_file()


def test_finetune_reference_updates_every_backbone_weight(tmp_path):
    out = train.Run(smoke(**{"learner.name": "finetune"}), tmp_path / "ft", progress=False).run()
    task = out["tasks"][0]
    # Dense CE fine-tuning: all weights selected, nothing dropped -> (almost) every element
    # moves; a few updates lr * g fall below float32 resolution of their weight.
    assert task["selected_fraction"] == 1.0
    assert task["updated_fraction"] > 0.95
    assert [len(r) for r in out["acc_matrix"]] == [1, 2]


def test_mist_on_first_task_only_matches_all_tasks_on_task_0(tmp_path):
    first = train.Run(smoke(**{"mist.tasks": "first"}), tmp_path / "a", progress=False).run()
    every = train.Run(smoke(), tmp_path / "b", progress=False).run()
    assert first["acc_matrix"][0] == every["acc_matrix"][0]
    assert "mi_loss_per_epoch" not in first["tasks"][1]


@pytest.mark.parametrize("key,value,needle", [
    ("mist.tasks", "al", "mist.tasks='al'"), ("mist.drop_rate", 1.0, "update nothing"),
    ("mist.epochs", 1, "mist.epochs=1"), ("mist.batch_size", 0, "mist.batch_size=0"),
    ("mist.selector", "fishr", "mist.selector='fishr'"), ("mist.select_rate", 0.0, "select_rate"),
    ("model.dtype", "float99", "model.dtype='float99'"), ("data.image_size", 0, "image_size=0"),
    ("mist.optimizer", "adamww", "adamww"), ("learner.name", "nope", "learner.name='nope'"),
    ("mesh.rules", ((r"(", "fsdp"),), "mesh.rules"),
    ("checkpoint_every_steps", -1, "checkpoint_every_steps=-1"),
    ("data.class_order_seed", -1, "data.class_order_seed=-1"), ("seed", 2 ** 32, "seed=4294967296"),
    ("seed", 10 ** 23, "seed=100000000000000000000000")])
def test_every_bad_value_is_named_before_any_work(tmp_path, key, value, needle):
    with pytest.raises(ValueError, match=re.escape(needle)):
        train.Run(smoke(**{key: value}), tmp_path / "w", progress=False)
    assert not (tmp_path / "w").exists()  # refused before the workdir was touched


def test_several_bad_values_are_reported_together(tmp_path):
    with pytest.raises(ValueError) as err:
        train.Run(smoke(**{"mist.tasks": "al", "mist.drop_rate": 1.0}), tmp_path / "w",
                  progress=False)
    assert "mist.tasks" in str(err.value) and "mist.drop_rate" in str(err.value)


def test_image_size_must_be_a_multiple_of_the_patch(tmp_path):
    with pytest.raises(ValueError, match="not a multiple of the model's patch size 8"):
        train.Run(smoke(**{"data.image_size": 36}), tmp_path / "w", progress=False)


def test_a_second_process_on_the_same_workdir_is_refused(tmp_path):
    """A run holds its workdir; another process gets a clear error naming the holder."""
    wd = tmp_path / "w"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from mist_jax.infra.lock import WorkdirLock; "
         f"lock = WorkdirLock({str(wd)!r}); print('locked', flush=True); time.sleep(60)"],
        cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RuntimeError, match=f"in use by a running mist-jax run \\(pid {holder.pid}"):
            train.Run(smoke(), wd, progress=False)
        assert not (wd / "checkpoints").exists()
    finally:
        holder.kill()
        holder.wait()
    # The OS released the dead holder's lock: the run goes ahead.
    assert train.Run(smoke(), wd, progress=False).record["next_task"] == 0


def test_event_log_holds_each_event_once_after_a_resume(tmp_path):
    cfg = smoke()
    crashed = train.Run(cfg, tmp_path / "r", progress=False)
    crashed._task(0)
    # The process dies in task 1 after logging some of its steps (no checkpoint yet).
    crashed.events.write({"event": "mist_step", "task": 1, "step": 5}, step=100005)
    del crashed
    out = train.Run(cfg, tmp_path / "r", progress=False).run()
    events = [json.loads(l) for l in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    keys = [(e["event"], e["task"], e.get("step")) for e in events]
    assert len(keys) == len(set(keys))
    assert [e["task"] for e in events if e["event"] == "task_end"] == [0, 1]
    assert len(out["acc_matrix"]) == 2
    # TensorBoard: the resumed writer asks to hide steps >= task 1's first step (100000).
    starts = [e.step for e in _tensorboard_events(tmp_path / "r" / "tensorboard")
              if e.HasField("session_log") and e.session_log.status == 1]  # START
    assert starts == [0, 100000]


def _tensorboard_events(folder):
    """Every Event of the TFRecord event files in ``folder`` (no TensorFlow needed)."""
    import struct

    from tensorboardX.proto import event_pb2

    events = []
    for path in sorted(folder.iterdir(), key=lambda p: p.stat().st_mtime_ns):
        data = path.read_bytes()
        pos = 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos:pos + 8])
            event = event_pb2.Event()
            event.ParseFromString(data[pos + 12:pos + 12 + length])
            events.append(event)
            pos += 12 + length + 4
    return events


def test_data_dir_spelt_differently_is_the_same_config(tmp_path, monkeypatch):
    from mist_jax.infra.checkpoint import config_diff, config_fingerprint
    from mist_jax.infra.paths import data_dir as default_data_dir

    a = smoke().to_dict()
    b = smoke(**{"data.data_dir": default_data_dir()}).to_dict()
    assert config_fingerprint(a) == config_fingerprint(b)
    c = smoke(**{"mist.select_rate": 0.05}).to_dict()
    assert config_diff(a, c) == ["mist.select_rate: 0.1 -> 0.05"]
    # Another learner's block is not part of the run (registering a learner adds one)...
    d = smoke().to_dict()
    d["learner"]["ranpac"]["num_projections"] += 1
    d["learner"]["not_yet_written"] = {"epochs": 3}
    assert config_fingerprint(d) == config_fingerprint(a)
    # ... the chosen learner's block is.
    e = smoke().to_dict()
    e["learner"]["simplecil"] = dict(e["learner"]["simplecil"], drift_compensation=True)
    assert config_diff(a, e) == ["learner.simplecil.drift_compensation: False -> True"]


def test_sigterm_stops_with_one_line_and_the_same_command_resumes(tmp_path):
    import signal
    import time

    env = dict(os.environ, JAX_PLATFORMS="cpu")
    cmd = [sys.executable, "-m", "mist_jax.main", "--config", "configs/default.py:smoke",
           "--config.compare_baseline=False", "--config.mist.log_every=1",
           "--workdir", str(tmp_path / "cli")]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    results = tmp_path / "cli" / "mist" / "results.json"
    events = tmp_path / "cli" / "mist" / "metrics.jsonl"
    deadline = time.time() + 300
    # The first MIST step of task 0 is logged: the signal lands in task 0, before the last task.
    while (not events.exists() or '"mist_step"' not in events.read_text()) \
            and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert not results.exists()
    assert proc.returncode == 130, err[-2000:]
    assert "Re-run the same command to resume" in err and "Traceback" not in err
    again = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    assert again.returncode == 0, again.stderr[-2000:]
    assert "Resumed" in again.stderr and results.is_file()
    # A corrupt newest checkpoint: one line naming its folder, no library traceback.
    newest = tmp_path / "cli" / "mist" / "checkpoints" / "1"
    for f in (newest / "state").rglob("*"):
        if f.is_file():
            f.write_bytes(b"garbage")
    broken = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    assert broken.returncode == 1 and "Traceback" not in broken.stderr
    lines = [l for l in broken.stderr.splitlines() if "is unreadable" in l]
    assert len(lines) == 1 and str(newest) in lines[0] and "move the folder away" in lines[0]


@pytest.mark.slow
def test_runs_differing_only_in_learner_share_one_mist_result(tmp_path):
    """RanPAC+MIST reusing SimpleCIL+MIST's tuned backbones (mist.cache_dir) gives what
    RanPAC+MIST computes itself: same accuracies, same MIST logs and step events, same params."""
    cache, every = str(tmp_path / "cache"), {"mist.log_every": 1}  # every step's event
    train.Run(smoke(**every, **{"mist.cache_dir": cache}), tmp_path / "simplecil",
              progress=False).run()
    reused = train.Run(smoke(**every, **{"mist.cache_dir": cache, "learner.name": "ranpac"}),
                       tmp_path / "reused", progress=False)
    got = reused.run()
    own = train.Run(smoke(**every, **{"learner.name": "ranpac"}), tmp_path / "own",
                    progress=False)
    want = own.run()
    assert all(t["mist_reused_seconds"] > 0 for t in got["tasks"])
    assert not any("mist_reused_seconds" in t for t in want["tasks"])
    for key in METRIC_KEYS:
        assert got[key] == want[key], key
    timing = lambda log: {k: v for k, v in log.items()
                          if k not in TIMING | {"mist_reused_seconds"}}
    for g, w in zip(got["tasks"], want["tasks"]):
        for k in set(timing(g)) | set(timing(w)):
            assert g.get(k) == w.get(k), (k, g.get(k), w.get(k))
    assert "mi_loss_per_epoch" in got["tasks"][1]
    leaves = lambda run: jax.tree_util.tree_leaves(jax.device_get(run.params))
    for a, b in zip(leaves(reused), leaves(own)):
        np.testing.assert_array_equal(a, b)
    steps = lambda wd: [{k: v for k, v in json.loads(line).items() if "time" not in k}
                        for line in (wd / "metrics.jsonl").read_text().splitlines()
                        if '"mist_step"' in line]
    assert steps(tmp_path / "reused") == steps(tmp_path / "own") != []
