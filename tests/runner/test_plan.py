"""The dry run (runner/plan.py, ``--dry_run``): every program compiled at the config's shapes
with no weights or data; FLOPs against a hand count of ViT-B/16's matmuls at the paper shape."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from configs import paper
from mist_jax.infra import accelerators
from mist_jax.runner import plan
from support.runs import smoke

ROOT = Path(__file__).resolve().parents[2]
# ViT-B/16 at 224 px: 196 patches + CLS; 2 x multiply-adds of the patch embedding, q/k/v, QK^T,
# AV, the projection and the MLP (the same count as tests/infra/test_programs.py).
_N, _T, _D, _M = 196, 197, 768, 3072
VIT_B16_FORWARD = 2 * (_N * 16 * 16 * 3 * _D + 12 * (_T * _D * 3 * _D + 2 * _T * _T * _D
                                                     + _T * _D * _D + 2 * _T * _D * _M))


def test_paper_shape_dry_run_needs_no_weights_and_counts_the_flops(tmp_path, monkeypatch):
    monkeypatch.setenv("MIST_JAX_CACHE", str(tmp_path / "empty_cache"))  # no weights anywhere
    cfg = paper.get_config("dataset=imagenet_r,learner=ranpac")
    with cfg.unlocked():
        cfg.plan.accelerator = "h200"
    lines = []
    out = plan.dry_run(cfg, tmp_path / "w", echo=lines.append)
    rows = {r["name"]: r for r in out["programs"]}
    assert set(rows) == {"mist scoring step", "mist tuning step", "features",
                         "ranpac projection", "ranpac logits"}
    # Two views, forward and backward: 6 forwards per image (about 211 GFLOP).
    assert rows["mist tuning step"]["flops_per_image"] == pytest.approx(6 * VIT_B16_FORWARD,
                                                                        rel=0.25)
    assert rows["mist scoring step"]["flops_per_image"] == pytest.approx(6 * VIT_B16_FORWARD,
                                                                         rel=0.25)
    assert rows["features"]["flops_per_image"] == pytest.approx(VIT_B16_FORWARD, rel=0.25)
    assert rows["mist tuning step"]["batch"] == 56
    # ViT-B/16 params float32 (86M) are in the tuning step's arguments.
    assert rows["mist tuning step"]["argument_bytes"] > 86e6 * 4
    saved = json.loads((tmp_path / "w" / "plan.json").read_text())
    assert saved["accelerator"] == "h200" and saved["fits"] is True
    # 10 tasks: per task is a tenth of the run.
    assert saved["estimated_seconds"]["run"] == pytest.approx(
        10 * saved["estimated_seconds"]["per_task"])
    assert any("H200" in line and "fits" in line for line in lines)


def test_a_program_larger_than_the_accelerator_is_refused_after_plan_json(tmp_path,
                                                                          monkeypatch):
    small = accelerators.Accelerator("a 1 MiB chip", 2 ** 20, 1.0, 1e12, 1e12)
    monkeypatch.setitem(accelerators.ACCELERATORS, "tpu_v2", small)
    cfg = smoke(**{"plan.accelerator": "tpu_v2"})
    with pytest.raises(plan.DoesNotFit, match=r"mesh\.fsdp.*remat.*bfloat16"):
        plan.dry_run(cfg, tmp_path, echo=lambda line: None)
    saved = json.loads((tmp_path / "plan.json").read_text())
    assert saved["fits"] is False
    assert all(r["peak_bytes_per_device"] > 0 for r in saved["programs"])


def test_unknown_accelerator_is_a_config_error_naming_the_choices(tmp_path):
    with pytest.raises(ValueError, match="plan.accelerator='tpu_v9'.*tpu_v5e"):
        plan.dry_run(smoke(**{"plan.accelerator": "tpu_v9"}), tmp_path)


def test_cli_dry_run_exports_mist_steps_for_tpu_and_cuda(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    env.pop("XLA_FLAGS", None)
    proc = subprocess.run(
        [sys.executable, "-m", "mist_jax.main", "--config", "configs/default.py:smoke",
         "--workdir", str(tmp_path), "--dry_run", "--config.plan.export=True",
         "--config.plan.accelerator=tpu_v5e"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "mist tuning step" in proc.stdout and "TPU v5e" in proc.stdout
    names = sorted(p.name for p in (tmp_path / "export").iterdir())
    assert names == [f"mist_{s}_step.{p}.jax_exported" for s in ("scoring", "tuning")
                     for p in ("cuda", "tpu")]
    saved = json.loads((tmp_path / "plan.json").read_text())
    assert saved["exported"] == [f"export/{n}" for n in
                                 ("mist_scoring_step.tpu.jax_exported",
                                  "mist_scoring_step.cuda.jax_exported",
                                  "mist_tuning_step.tpu.jax_exported",
                                  "mist_tuning_step.cuda.jax_exported")]
    assert not (tmp_path / "config.json").exists()  # a dry run is not a run


@pytest.mark.parametrize("kind, name", [("TPU v5 lite", "tpu_v5e"), ("TPU v6 lite", "tpu_v6e"),
                                        ("TPU v3", "tpu_v3"), ("NVIDIA A100-SXM4-40GB", "a100_40"),
                                        ("NVIDIA A100-SXM4-80GB", "a100_80"),
                                        ("NVIDIA H100 80GB HBM3", "h100"), ("NVIDIA H200", "h200"),
                                        ("cpu", None), ("Tesla T4", None)])
def test_device_kinds_name_their_accelerator(kind, name):
    assert accelerators.from_device_kind(kind) == name
