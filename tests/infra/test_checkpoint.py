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


def _data_files(folder):
    return sorted(f for f in (folder / "state").rglob("*") if f.is_file()
                  and f.stat().st_size > 0 and "metadata" not in f.name)


def test_flipped_bytes_never_resume_silently(tmp_path):
    """A bit flipped anywhere in a checkpoint's array files either fails, naming the checkpoint
    and the one to fall back to, or (a byte no array reads) restores the saved values exactly."""
    rng = np.random.default_rng(0)
    big = {"params": {"w": rng.normal(size=(64, 64)).astype(np.float32)},
           "mist": {"count": np.arange(100, dtype=np.int32)}}
    seen = set()
    for trial in range(12):
        folder = tmp_path / f"c{trial}"
        RunCheckpointer(folder, {"a": 1}).save(0, big, {"next_task": 1})
        RunCheckpointer(folder, {"a": 1}).save(1, big, {"next_task": 2})
        # Orbax names its files by random hashes: order them by size, not name, so every run
        # flips the same kinds of bytes. Even trials hit the array data file (the largest).
        files = sorted(_data_files(folder / "1"), key=lambda f: -f.stat().st_size)
        f = files[0] if trial % 2 == 0 else files[int(rng.integers(len(files)))]
        data = bytearray(f.read_bytes())
        offset = int(rng.integers(len(data)))
        data[offset] ^= 1 << int(rng.integers(8))
        f.write_bytes(bytes(data))
        try:
            state, _ = RunCheckpointer(folder, {"a": 1}).restore()
        except ValueError as e:
            assert str(folder / "1") in str(e), e
            if "damaged" in str(e):
                assert str(folder / "0") in str(e)  # where the re-run resumes from
            seen.add("damaged" if "damaged" in str(e) else "unreadable")
            continue
        np.testing.assert_array_equal(state["params"]["w"], big["params"]["w"])
        np.testing.assert_array_equal(state["mist"]["count"], big["mist"]["count"])
    assert "damaged" in seen  # the digest, not only the file format, catches flipped data


def test_a_damaged_in_task_checkpoint_names_the_fallback(tmp_path):
    w = np.random.default_rng(0).normal(size=(64, 64)).astype(np.float32)
    rng, messages = np.random.default_rng(1), []
    for trial in range(20):  # flip bits in the array file until one lands in the data
        ckpt = RunCheckpointer(tmp_path / f"c{trial}", {"a": 1})
        ckpt.save_in_task(0, 1, {"loop": {"w": w}}, {})
        f = max(_data_files(tmp_path / f"c{trial}_in_task" / "1"), key=lambda f: f.stat().st_size)
        data = bytearray(f.read_bytes())
        data[int(rng.integers(len(data) // 4, len(data)))] ^= 16
        f.write_bytes(bytes(data))
        try:
            got, _ = RunCheckpointer(tmp_path / f"c{trial}", {"a": 1}).restore_in_task(0)
            np.testing.assert_array_equal(got["loop"]["w"], w)
        except ValueError as e:
            messages.append(str(e))
    damaged = [m for m in messages if "damaged" in m]
    assert damaged and "its array 'loop/w'" in damaged[0]
    assert "the run resumes from the last finished task's checkpoint" in damaged[0]
