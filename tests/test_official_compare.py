"""benchmarks/official_compare.py without torch: the mist-jax side at tiny shapes, and its
statistics against hand-computed values. (The official side needs a PyTorch venv and the
zhwhu/MIST checkout; docs/results.md has its numbers.)"""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import official_compare as oc  # noqa: E402


def test_jaccard_and_interval_by_hand():
    a = np.array([1, 1, 0, 0, 1], bool)
    b = np.array([1, 0, 1, 0, 1], bool)
    assert oc.jaccard(a, b) == pytest.approx(2 / 4)
    assert oc.jaccard(np.zeros(3, bool), np.zeros(3, bool)) == 1.0
    got = oc.interval([1.0, 2.0, 3.0])
    # mean 2, sd 1, t(0.975, 2 dof) = 4.302653 -> 2 -+ 4.302653 / sqrt(3)
    assert got["mean"] == pytest.approx(2.0) and got["sd"] == pytest.approx(1.0)
    assert got["ci95"] == pytest.approx([2 - 4.302653 / 3 ** 0.5, 2 + 4.302653 / 3 ** 0.5],
                                        rel=1e-6)


def test_official_masks_read_back_the_packed_bits(tmp_path):
    mask = np.random.default_rng(0).random((3, 7)) < 0.1
    np.savez(tmp_path / "run.json.mask2.npz", **{"blocks.0.mlp.fc1.weight": np.packbits(mask)})
    back = oc.official_masks(str(tmp_path / "run.json"), 2, {"blocks.0.mlp.fc1.weight": (3, 7)})
    np.testing.assert_array_equal(back["blocks.0.mlp.fc1.weight"], mask)
    assert oc.counted("blocks.0.attn.qkv.weight") and oc.counted("blocks.0.ls1.gamma")
    assert not oc.counted("blocks.0.attn.qkv.bias") and not oc.counted("norm.weight")


@pytest.mark.slow
def test_jax_side_records_gains_changes_and_losses_of_every_task(tmp_path):
    out = tmp_path / "out.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "official_compare.py"), "--config",
         "configs/default.py:smoke", "--jax-only", "--seeds", "0", "--learners", "simplecil",
         "--workdir", str(tmp_path / "w"), "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    run = tmp_path / "w" / "s0" / "simplecil" / "run"
    mist, frozen = (json.loads((run / k / "results.json").read_text())["acc_matrix"]
                    for k in ("mist", "baseline"))
    # average accuracy = mean over tasks of the mean accuracy over the tasks seen
    avg = lambda m: np.mean([np.mean([v for v in row if v is not None]) for row in m])
    assert result["simplecil"]["mist_jax"]["gains"] == [pytest.approx(avg(mist) - avg(frozen))]
    (row,) = result["rows"]
    assert row["seed"] == 0 and row["class_order_seed"] == 1993
    tasks = row["mist_jax"]["tasks"]
    assert len(tasks) == len(mist)
    for t in tasks:
        # MIST moved some, not all, of the backbone (10% selected, 90% of that dropped)
        assert 0 < t["changed_fraction"] < 1 and t["change_norm"] > 0
        assert len(t["mi_loss_per_epoch"]) >= 1
    stream = np.load(tmp_path / "w" / "s0" / "simplecil" / "stream.npz")
    assert stream["train_images"].dtype == np.uint8 and stream["train_images"].shape[-1] == 3
    assert int(stream["image_size"]) == stream["probe"].shape[1]
    assert "| simplecil | mist_jax |" in proc.stdout
