"""Two local processes with jax.distributed on CPU run one task end to end, and give the
single-process result (each process transforms its own rows; process 0 writes)."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ARGS = ["-m", "mist_jax.main", "--config", "configs/default.py:smoke",
        "--config.data.init_cls=10", "--config.compare_baseline=False"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_match_one(tmp_path):
    env = dict(os.environ, JAX_PLATFORMS="cpu", MIST_JAX_DATA=str(tmp_path / "data"))
    env.pop("XLA_FLAGS", None)
    single = subprocess.run([sys.executable, *ARGS, "--workdir", str(tmp_path / "one")],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert single.returncode == 0, single.stderr[-2000:]
    port = _free_port()
    procs = [subprocess.Popen(
        [sys.executable, *ARGS, "--workdir", str(tmp_path / "two")], cwd=ROOT,
        env=dict(env, JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", JAX_NUM_PROCESSES="2",
                 JAX_PROCESS_ID=str(i)), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True) for i in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (_, err) in zip(procs, outs):
        assert p.returncode == 0, err[-2000:]
    one = json.loads((tmp_path / "one" / "mist" / "results.json").read_text())
    two = json.loads((tmp_path / "two" / "mist" / "results.json").read_text())
    assert two["acc_matrix"] == one["acc_matrix"]
    assert two["tasks"][0]["mi_loss_per_epoch"] == pytest.approx(
        one["tasks"][0]["mi_loss_per_epoch"], rel=1e-5)
    assert "average_accuracy" in outs[0][0] and "average_accuracy" not in outs[1][0]
