"""A learner that trains its own prompts through the backbone, plugged in from one file
(tests/support/prompt_learner.py), runs end to end: MIST tunes the backbone, the learner trains prompts
and a head on augmented images, the run evaluates and checkpoints both pytrees."""

import math

import jax
import numpy as np
import pytest

from support.prompt_learner import PromptHead  # noqa: E402  (registers "prompt_head")
from support.runs import smoke  # noqa: E402

from mist_jax.infra import interrupt  # noqa: E402
from mist_jax import learners
from mist_jax.runner import train
from support.runs import StopAt  # noqa: E402


def _config(**overrides):
    # Milder crops than the default (0.05, 1): 28 px digits stay readable for a random ViT.
    cfg = smoke(**{"learner.name": "prompt_head", "data.train_crop_scale": (0.5, 1.0),
                   **overrides})
    with cfg.unlocked():
        cfg.learner.prompt_head = PromptHead.default_config()
        cfg.learner.prompt_head.update(epochs=8, batch_size=10, learning_rate=0.01)
    return cfg


def test_config_block_comes_from_the_dataclass():
    assert learners.LEARNERS["prompt_head"] is PromptHead
    assert "prompt_head" in smoke().learner  # registered before the config is built
    assert dict(PromptHead.default_config()) == {"epochs": 1, "batch_size": 32,
                                                 "learning_rate": 1e-3, "drop_last": False,
                                                 "length": 4}


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """An uninterrupted run: (Run, results, initial backbone, initial prompts)."""
    run = train.Run(_config(), tmp_path_factory.mktemp("prompt") / "run", progress=False)
    backbone0 = jax.device_get(run.params["backbone"])
    prompts0 = np.asarray(run.learner_state.params["prompts"])
    return run, run.run(), backbone0, prompts0


def test_prompt_learner_trains_end_to_end(finished):
    run, results, backbone0, prompts0 = finished
    assert [len(r) for r in results["acc_matrix"]] == [1, 2]
    for task in results["tasks"]:
        losses = task["learner_loss_per_epoch"]
        # A zero head starts at the chance loss log(5) over the task's 5 classes (the train
        # mask hides the other classes); training brings the epoch loss below it and down.
        assert len(losses) == 8 and losses[-1] < min(losses[0], math.log(5)), losses
        assert "mi_loss_per_epoch" in task  # MIST tuned the backbone before the learner
    state = run.learner_state.params
    assert state["prompts"].shape == (4, run.model.width)
    assert not np.allclose(np.asarray(state["prompts"]), prompts0)  # prompts were trained
    # The head covers all 10 classes: both tasks' columns were trained.
    assert np.abs(np.asarray(state["kernel"])).sum(axis=0).min() > 0
    moved = jax.tree.map(lambda a, b: not np.array_equal(a, np.asarray(b)), backbone0,
                         run.params["backbone"])
    assert any(jax.tree.leaves(moved))  # MIST (not the learner) moved the backbone

    # The checkpoint holds the backbone and the learner's prompts; a second Run resumes
    # with both, identical.
    again = train.Run(_config(), run.workdir, progress=False)
    assert again.record["next_task"] == 2
    np.testing.assert_array_equal(np.asarray(again.learner_state.params["prompts"]),
                                  np.asarray(state["prompts"]))
    chex_equal = jax.tree.map(np.array_equal, jax.device_get(again.params["backbone"]),
                              jax.device_get(run.params["backbone"]))
    assert all(jax.tree.leaves(chex_equal))


def test_stopped_inside_the_learner_epochs_resumes_there_bitwise(finished, tmp_path):
    run, results, _, _ = finished
    # Task 0: boundaries 1-4 score, 5-8 MIST steps, 9-32 learner steps (8 epochs x 3 batches): the 13th is epoch 1, batch 2.
    wd = tmp_path / "stopped"
    with pytest.raises(interrupt.Interrupted, match=r"learner phase, epoch 1, batch 2"):
        train.Run(_config(), wd, progress=False, stop=StopAt(13)).run()
    again = train.Run(_config(), wd, progress=False)
    assert again._in_task.record["position"] == {"phase": "learner", "epoch": 1, "batch": 2}
    resumed = again.run()
    assert resumed["acc_matrix"] == results["acc_matrix"]
    for task in (0, 1):  # the losses of every epoch, the resumed one included, are the same
        assert (resumed["tasks"][task]["learner_loss_per_epoch"]
                == results["tasks"][task]["learner_loss_per_epoch"])
    same = jax.tree.map(np.array_equal, jax.device_get(again.learner_state.params),
                        jax.device_get(run.learner_state.params))
    assert all(jax.tree.leaves(same))
    same = jax.tree.map(np.array_equal, jax.device_get(again.params),
                        jax.device_get(run.params))
    assert all(jax.tree.leaves(same))


def test_without_mist_the_backbone_stays_frozen(tmp_path):
    run = train.Run(_config(**{"mist.enabled": False}), tmp_path / "frozen", progress=False)
    backbone0 = jax.device_get(run.params["backbone"])
    results = run.run()
    same = jax.tree.map(np.array_equal, backbone0, jax.device_get(run.params["backbone"]))
    assert all(jax.tree.leaves(same))
    assert "mi_loss_per_epoch" not in results["tasks"][0]


def test_unknown_learner_and_missing_block_fail_before_work(tmp_path):
    with pytest.raises(ValueError, match="learner.name='nope'"):
        train.Run(smoke(**{"learner.name": "nope"}), tmp_path / "a", progress=False)
    # A learner registered after the config was built has no block in it.
    cfg = smoke(**{"learner.name": "prompt_head"})
    with cfg.unlocked():
        del cfg.learner["prompt_head"]
    with pytest.raises(ValueError, match="learner.prompt_head: the config has no block"):
        train.Run(cfg, tmp_path / "b", progress=False)
