"""Atomic writes (mist_jax/infra/atomic.py): readable mode, fsync before the rename, and a failed
write leaves the old file and no temporary file behind."""

import os
import stat

import pytest

from mist_jax.infra import atomic


def test_written_file_is_world_readable_and_synced_before_the_rename(tmp_path, monkeypatch):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(os.readlink(f"/proc/self/fd/{fd}"))
                        or real_fsync(fd))
    target = tmp_path / "results.json"
    atomic.write_text(target, "{}\n")
    assert target.read_text() == "{}\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644  # mkstemp alone would give 0600
    assert len(synced) == 1 and synced[0] != str(target)  # the temp file, before it was renamed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp_file(tmp_path):
    target = tmp_path / "plot.png"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic.atomic_path(target, suffix=".png") as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("disk full")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["plot.png"]
