"""Run checkpoints: round trip, config fingerprint, and clear errors for corrupt files."""

import numpy as np
import pytest

from mist_jax.checkpoint import RunCheckpointer

STATE = {"params": {"w": np.arange(6, dtype=np.float32).reshape(2, 3)},
         "mist": {"frozen": np.array([True, False]), "count": np.array([0, 2], np.int32)}}


def test_round_trip_and_result_neutral_keys(tmp_path):
    RunCheckpointer(tmp_path, {"a": 1, "mesh": {"fsdp": 2}}).save(0, STATE, {"next_task": 1})
    state, record = RunCheckpointer(tmp_path, {"a": 1, "mesh": {"fsdp": 1}}).restore()
    assert record["next_task"] == 1
    np.testing.assert_array_equal(state["params"]["w"], STATE["params"]["w"])
    assert state["mist"]["count"].dtype == np.int32 and state["mist"]["frozen"].dtype == bool
    assert RunCheckpointer(tmp_path / "empty", {"a": 1}).restore() is None


def test_other_config_is_refused(tmp_path):
    RunCheckpointer(tmp_path, {"a": 1}).save(0, STATE, {"next_task": 1})
    with pytest.raises(ValueError, match="different config.*--workdir"):
        RunCheckpointer(tmp_path, {"a": 2}).restore()


def test_corrupt_checkpoint_names_the_folder(tmp_path):
    RunCheckpointer(tmp_path, {"a": 1}).save(0, STATE, {"next_task": 1})
    for f in (tmp_path / "0" / "state").rglob("*"):
        if f.is_file():
            f.write_bytes(b"garbage")
    with pytest.raises(ValueError, match=r"unreadable.*move the folder away"):
        RunCheckpointer(tmp_path, {"a": 1}).restore()
