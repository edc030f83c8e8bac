"""Run checkpoints: round trip, config fingerprint, and clear errors for corrupt files."""

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mist_jax.infra import trees
from mist_jax.infra.checkpoint import RunCheckpointer

STATE = {"params": {"w": np.arange(6, dtype=np.float32).reshape(2, 3)},
         "mist": {"frozen": np.array([True, False]), "count": np.array([0, 2], np.int32)}}


def test_round_trip_and_result_neutral_keys(tmp_path):
    RunCheckpointer(tmp_path / "c", {"a": 1, "mesh": {"fsdp": 2}}).save(0, STATE, {"next_task": 1})
    state, record = RunCheckpointer(tmp_path / "c", {"a": 1, "mesh": {"fsdp": 1}}).restore()
    assert record["next_task"] == 1
    np.testing.assert_array_equal(state["params"]["w"], STATE["params"]["w"])
    assert state["mist"]["count"].dtype == np.int32 and state["mist"]["frozen"].dtype == bool
    assert RunCheckpointer(tmp_path / "empty", {"a": 1}).restore() is None


def test_other_config_is_refused(tmp_path):
    RunCheckpointer(tmp_path / "c", {"a": 1}).save(0, STATE, {"next_task": 1})
    with pytest.raises(ValueError, match="different config.*--workdir"):
        RunCheckpointer(tmp_path / "c", {"a": 2}).restore()


def test_corrupt_checkpoint_names_the_folder(tmp_path):
    RunCheckpointer(tmp_path / "c", {"a": 1}).save(0, STATE, {"next_task": 1})
    for f in (tmp_path / "c" / "0" / "state").rglob("*"):
        if f.is_file():
            f.write_bytes(b"garbage")
    with pytest.raises(ValueError, match=r"unreadable.*move the folder away"):
        RunCheckpointer(tmp_path / "c", {"a": 1}).restore()


def test_in_task_round_trip_keeps_every_kind_of_leaf(tmp_path):
    opt_state = optax.sgd(0.1, momentum=0.9).init({"w": jnp.ones((2, 3))})
    loop = {"params": {"w": np.full((2, 3), 0.5, np.float32)}, "mask": {"w": np.eye(2, 3) > 0},
            "opt_state": trees.leaf_dict(opt_state), "losses": np.zeros(0),  # zero-size
            "epoch_losses": np.array([1.5, 2.25], np.float32), "steps": 7, "phase": "tune"}
    RunCheckpointer(tmp_path / "c", {"a": 1}).save_in_task(3, 5, {"loop": loop}, {"x": [1, 2]})
    ckpt = RunCheckpointer(tmp_path / "c", {"a": 1, "checkpoint_every_steps": 9})
    state, record = ckpt.restore_in_task(3)
    got = state["loop"]
    assert record["x"] == [1, 2] and record["task"] == 3 and record["n"] == 5
    assert got["steps"] == 7 and got["phase"] == "tune"
    assert got["losses"].shape == (0,) and got["losses"].dtype == np.float64
    assert got["mask"]["w"].dtype == bool and got["mask"]["w"].tolist() == loop["mask"]["w"].tolist()
    np.testing.assert_array_equal(got["epoch_losses"], loop["epoch_losses"])
    back = trees.from_leaf_dict(opt_state, got["opt_state"])
    assert type(back) is type(opt_state)  # the optax NamedTuples come back
    np.testing.assert_array_equal(back[0].trace["w"], np.zeros((2, 3)))
    with pytest.raises(ValueError, match="saved leaves do not fit"):
        trees.from_leaf_dict(optax.adam(0.1).init({"w": jnp.ones((2, 3))}), got["opt_state"])
    # Another task's in-task checkpoint is stale (its task checkpoint was written): deleted.
    assert ckpt.restore_in_task(4) is None
    assert ckpt.restore_in_task(3) is None
    # A different config is refused, as for task checkpoints.
    RunCheckpointer(tmp_path / "d", {"a": 1}).save_in_task(0, 1, {"loop": loop}, {})
    with pytest.raises(ValueError, match="different config.*a: 1 -> 2"):
        RunCheckpointer(tmp_path / "d", {"a": 2}).restore_in_task(0)
