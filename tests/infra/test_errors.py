"""Failures a user causes on their own folders: one line with the fix, never a traceback."""

import errno
import os
import subprocess
import sys
from pathlib import Path

from mist_jax.infra.errors import one_line

ROOT = Path(__file__).resolve().parents[2]


def test_os_errors_on_the_users_folders_name_the_fix():
    full = one_line(OSError(errno.ENOSPC, "No space left on device", "/runs/x/results.json"))
    assert full.startswith("OSError: no space left on the disk holding /runs/x/results.json")
    assert "re-run the same command" in full
    ro = one_line(PermissionError(errno.EROFS, "Read-only file system", "/mnt/ro/run"))
    assert "/mnt/ro/run cannot be written (Read-only file system)" in ro and "--workdir" in ro
    denied = one_line(PermissionError(errno.EACCES, "Permission denied", "/root/run"))
    assert "cannot be written" in denied
    assert one_line(ValueError("bad key")) == "ValueError: bad key"


def test_a_workdir_that_is_a_file_is_one_line(tmp_path):
    target = tmp_path / "notes.txt"
    target.write_text("my notes")
    cmd = [sys.executable, "-m", "mist_jax.main", "--config", "configs/default.py:smoke",
           "--workdir", str(target)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True,
                          env=dict(os.environ, JAX_PLATFORMS="cpu"), timeout=600)
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert f"{target}" in done.stderr and "is a file, not a folder" in done.stderr
    assert target.read_text() == "my notes"  # nothing the user had is touched
