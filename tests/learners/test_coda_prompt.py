"""CODA-Prompt (mist_jax/learners/coda_prompt.py): orthogonal init of a task's components, the
attention-weighted prompt against NumPy (paper Eq. 4-5), earlier tasks' components frozen
(zero gradient; bitwise unchanged over a run), the reference's per-epoch cosine learning rate, and
the learner end to end with and without MIST."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from support.learner_runs import assert_resumes_bitwise, learner_config, run_without_mist  # noqa: E402
from support.runs import StopAt  # noqa: E402

from mist_jax import learners  # noqa: E402
from mist_jax.infra import interrupt  # noqa: E402
from mist_jax.runner import train
from mist_jax.learners.coda_prompt import CodaPrompt, orthonormal_block  # noqa: E402
from mist_jax.learners.prompting import init_torch_linear_head  # noqa: E402
from mist_jax.models import vit  # noqa: E402


def test_new_block_is_orthonormal_to_trained_earlier_rows():
    rng = np.random.default_rng(0)
    rows = rng.normal(size=(7, 12)).astype(np.float32)  # rows 0-2: "trained", not orthogonal
    out = orthonormal_block(rows, 3, 6, jax.random.PRNGKey(1))
    np.testing.assert_array_equal(out[:3], rows[:3])
    np.testing.assert_array_equal(out[6:], rows[6:])
    new = out[3:6].astype(np.float64)
    np.testing.assert_allclose(new @ new.T, np.eye(3), atol=1e-6)
    np.testing.assert_allclose(rows[:3].astype(np.float64) @ new.T, 0, atol=1e-5)
    with pytest.raises(ValueError, match="do not fit"):
        orthonormal_block(rows, 3, 13, jax.random.PRNGKey(1))


def _tiny():
    model = vit.ViT(width=16, depth=2, num_heads=2, mlp_dim=32, patch_size=4, image_size=8)
    learner = CodaPrompt(model=model, preprocess=lambda x: x, num_classes=6, num_tasks=3,
                         pool_size=6, length=4, layers=(0, 1))
    images = jax.random.uniform(jax.random.key(0), (5, 8, 8, 3))
    backbone = model.init(jax.random.key(1), images)["params"]
    return learner, model, images, backbone


def test_prompt_is_the_attention_weighted_sum_of_the_task_components():
    learner, model, images, backbone = _tiny()
    state = learner.init(jax.random.key(2), model.width)
    p = jax.device_get(state.params)
    q = np.asarray(learner.query(backbone, images), np.float64)
    norm = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
    for task, train_mode, stop in ((1, True, 4), (1, False, 2), (3, False, 6)):
        got = np.asarray(learner.prompts(state.params, jnp.asarray(q, jnp.float32),
                                         jnp.int32(task), train_mode))
        for j in range(2):  # prompted block
            want = np.zeros((5, 4, 16))
            for b in range(5):
                for m in range(stop):
                    alpha = norm(q[b] * p["attention"][j, m]) @ norm(p["keys"][j, m])
                    want[b] += alpha * p["components"][j, m]
            np.testing.assert_allclose(got[j], want, rtol=1e-4, atol=1e-5)


def test_only_the_current_task_components_get_gradient():
    learner, model, images, backbone = _tiny()
    state = learner.init(jax.random.key(2), model.width).replace(task=jnp.int32(1))
    g = jax.grad(learner.loss)(state.params, state, backbone, images, jnp.array([2, 3, 2, 3, 2]),
                               jnp.array([2, 4]))
    for name in ("components", "keys", "attention"):
        per = np.abs(np.asarray(g[name])).reshape(2, 6, -1).sum(axis=(0, 2)) > 0
        np.testing.assert_array_equal(per, [False, False, True, True, False, False], name)


def test_learning_rate_follows_the_reference_cosine_schedule_per_epoch():
    tx = CodaPrompt(epochs=3, learning_rate=1e-3).optimizer(steps_per_epoch=2)
    params = {"w": jnp.zeros(())}
    opt = tx.init(params)
    for step in range(6):  # Adam on a constant gradient 1 moves by the learning rate
        update, opt = tx.update({"w": jnp.ones(())}, opt, params)
        want = 1e-3 * math.cos(99 * math.pi * (step // 2) / (200 * 2))  # CODA's CosineSchedule
        assert float(update["w"]) == pytest.approx(-want, rel=1e-4)


def test_head_is_initialised_as_torch_nn_linear():
    """The reference head is ``nn.Linear(768, C)`` with PyTorch's default init: weight and bias
    uniform in +-1/sqrt(fan_in) (a truncated normal of std 0.02 would stay within 0.04)."""
    d, c = 400, 300
    head = init_torch_linear_head(jax.random.key(0), d, c)
    bound = d ** -0.5
    for name, shape in (("kernel", (d, c)), ("bias", (c,))):
        x = np.asarray(head[name])
        assert x.shape == shape and np.abs(x).max() <= bound
        assert np.abs(x).max() > 0.95 * bound  # spans the whole interval
        # uniform(-b, b) has standard deviation b / sqrt(3)
        np.testing.assert_allclose(x.std(), bound / np.sqrt(3), rtol=0.05 if x.size > 1000
                                   else 0.2)
    learner, model, _, _ = _tiny()
    params = learner.init(jax.random.key(1), model.width).params
    assert np.abs(np.asarray(params["bias"])).max() > 0
    assert np.abs(np.asarray(params["kernel"])).max() <= model.width ** -0.5


def test_odd_length_and_too_small_pool_are_refused():
    with pytest.raises(ValueError, match="must be even"):
        CodaPrompt(length=5)
    with pytest.raises(ValueError, match="no component to some"):
        CodaPrompt(pool_size=4, num_tasks=5)


_config = learner_config("coda_prompt", {"data.train_crop_scale": (0.5, 1.0)}, layers=(0, 1),
                         pool_size=4, length=2, epochs=3, batch_size=10, learning_rate=0.01)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A run stepped task by task: (Run, learner params after task 0, results)."""
    run = train.Run(_config(), tmp_path_factory.mktemp("coda") / "run", progress=False)
    run._task(0)
    after0 = jax.device_get(run.learner_state.params)
    run._task(1)
    return run, after0, run.run()


def test_coda_with_mist_freezes_earlier_components_and_starts_new_ones_orthogonal(finished):
    run, after0, results = finished
    assert learners.LEARNERS["coda_prompt"] is CodaPrompt
    assert [len(r) for r in results["acc_matrix"]] == [1, 2]
    assert all("mi_loss_per_epoch" in t for t in results["tasks"])
    final = jax.device_get(run.learner_state.params)
    for name in ("components", "keys", "attention"):  # 2 components per task
        np.testing.assert_array_equal(final[name][:, :2], after0[name][:, :2])  # task 0 frozen
        assert not np.array_equal(final[name][:, 2:], after0[name][:, 2:])  # task 1 trained
        for j in range(2):  # task 1's start: orthonormal to task 0's trained components
            old = after0[name][j, :2].reshape(2, -1).astype(np.float64)
            new = after0[name][j, 2:].reshape(2, -1).astype(np.float64)
            np.testing.assert_allclose(old @ new.T, 0, atol=1e-4)
            np.testing.assert_allclose(new @ new.T, np.eye(2), atol=1e-5)


def test_coda_stopped_inside_its_epochs_resumes_bitwise(finished, tmp_path):
    run, _, results = finished
    # Boundary 13: task 0, learner epoch 1, batch 2.
    assert_resumes_bitwise(_config, run, results, tmp_path, 13, r"learner phase, epoch 1, batch 2")


def test_coda_without_mist_keeps_the_backbone_bitwise(tmp_path):
    run_without_mist(_config, tmp_path)


@pytest.mark.parametrize("drop_last,where", [(False, "epoch 1, batch 3"),
                                              (True, "epoch 2, batch 1")])
def test_drop_last_gives_the_reference_loaders_steps_per_epoch(tmp_path, drop_last, where):
    """30 training images per task in batches of 8: 4 steps per epoch (8, 8, 8, 6) as
    LAMDA-PILOT's loader, 3 with ``drop_last`` as GT-RIPL/CODA-Prompt's; stopped after the
    7th step, the run is in epoch 1 after 3 of its steps, or in epoch 2 after 1."""
    make = learner_config("coda_prompt", layers=(0, 1), pool_size=4, length=2, epochs=3,
                          batch_size=8, drop_last=drop_last)
    with pytest.raises(interrupt.Interrupted, match=f"learner phase, {where}"):
        train.Run(make(**{"mist.enabled": False}), tmp_path / "run", progress=False,
                  stop=StopAt(7)).run()
