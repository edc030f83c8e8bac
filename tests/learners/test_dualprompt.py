"""DualPrompt (mist_jax/learners/dualprompt.py): E-prompt choice at test time against a NumPy
brute force, the loss against a NumPy transcription of paper Eq. 6, other tasks' E-prompts
bitwise untouched while a task trains, and the learner end to end with and without MIST."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest

from support.learner_runs import assert_resumes_bitwise, learner_config, run_without_mist  # noqa: E402

from mist_jax import learners  # noqa: E402
from mist_jax.runner import train
from mist_jax.learners.dualprompt import DualPrompt  # noqa: E402
from mist_jax.models import vit  # noqa: E402


def _tiny(**kw):
    model = vit.ViT(width=16, depth=3, num_heads=2, mlp_dim=32, patch_size=4, image_size=8)
    learner = DualPrompt(model=model, preprocess=lambda x: x, num_classes=6, g_layers=(0,),
                         e_layers=(1, 2), g_length=2, e_length=3, pool_size=4, **kw)
    images = jax.random.uniform(jax.random.key(0), (5, 8, 8, 3))
    backbone = model.init(jax.random.key(1), images)["params"]
    return learner, model, images, backbone


def _cos(q, k):
    q = q / np.linalg.norm(q, axis=1, keepdims=True)
    return q @ (k / np.linalg.norm(k, axis=1, keepdims=True)).T


def test_test_time_e_prompt_is_the_best_matching_trained_key():
    learner, model, images, backbone = _tiny()
    state = learner.init(jax.random.key(2), model.width)
    q = np.asarray(model.apply({"params": backbone}, images, tokens="cls"), np.float64)
    cos = _cos(q, np.asarray(state.params["keys"], np.float64))
    for seen in (1, 2, 3):  # tasks finished: only their keys are candidates
        st = state.replace(task=jnp.int32(seen))
        want_ids = np.array([max(range(seen), key=lambda m: cos[b, m]) for b in range(5)])
        want = learner.classify(st.params, backbone, images, jnp.asarray(want_ids, jnp.int32))
        np.testing.assert_array_equal(np.asarray(learner.logits(st, backbone, images)),
                                      np.asarray(want))


def test_prefixes_go_to_their_blocks():
    learner, _, _, _ = _tiny()
    state = learner.init(jax.random.key(2), 16)
    p = state.params
    prefix = learner.prefix(p, jnp.array([3, 0], jnp.int32))
    assert sorted(prefix) == [0, 1, 2]
    np.testing.assert_array_equal(prefix[0][1], p["g_value"][0])  # G: shared, [Lg, D]
    np.testing.assert_array_equal(prefix[2][0], p["e_key"][1][jnp.array([3, 0])])  # [B, Le, D]
    assert prefix[1][0].shape == (2, 3, 16)


def test_loss_is_masked_cross_entropy_minus_the_task_key_pull():
    learner, model, images, backbone = _tiny(pull_coeff=0.5)
    state = learner.init(jax.random.key(2), model.width).replace(task=jnp.int32(2))
    labels, task = jnp.array([4, 5, 5, 4, 4]), jnp.array([4, 6])
    got = float(learner.loss(state.params, state, backbone, images, labels, task))
    logits = np.asarray(learner.classify(state.params, backbone, images,
                                         jnp.full((5,), 2, jnp.int32)), np.float64)
    z = logits[:, 4:6]
    ce = np.mean(np.log(np.exp(z).sum(1)) - logits[np.arange(5), np.asarray(labels)])
    q = np.asarray(model.apply({"params": backbone}, images, tokens="cls"), np.float64)
    pull = _cos(q, np.asarray(state.params["keys"], np.float64))[:, 2].mean()
    np.testing.assert_allclose(got, ce - 0.5 * pull, rtol=1e-5, atol=1e-5)


def test_only_the_task_e_prompt_and_key_get_gradient():
    learner, model, images, backbone = _tiny()
    state = learner.init(jax.random.key(2), model.width).replace(task=jnp.int32(1))
    g = jax.grad(learner.loss)(state.params, state, backbone, images,
                               jnp.array([2, 3, 2, 3, 2]), jnp.array([2, 4]))
    for name in ("e_key", "e_value"):
        used = np.abs(np.asarray(g[name])).sum(axis=(0, 2, 3)) > 0  # per pool entry
        np.testing.assert_array_equal(used, [False, True, False, False])
    np.testing.assert_array_equal(np.abs(np.asarray(g["keys"])).sum(1) > 0,
                                  [False, True, False, False])
    for name in ("g_key", "g_value", "kernel"):
        assert np.abs(np.asarray(g[name])).sum() > 0, name


def test_next_e_prompt_starts_from_the_trained_one_with_a_shared_pool():
    """shared_prompt_pool (both references on ImageNet-R): task t+1's E-prompt (prefix key and
    value) starts as task t's; the matching keys are not copied (shared_prompt_key: false)."""
    for shared in (True, False):
        learner, model, _, _ = _tiny(shared_prompt_pool=shared)
        state = learner.init(jax.random.key(2), model.width).replace(task=jnp.int32(1))
        before = jax.device_get(state.params)
        after = jax.device_get(learner.end_task(state, (2, 4)).params)
        for name in ("e_key", "e_value"):
            want = before[name][:, 1] if shared else before[name][:, 2]
            np.testing.assert_array_equal(after[name][:, 2], want)
            np.testing.assert_array_equal(np.delete(after[name], 2, axis=1),
                                          np.delete(before[name], 2, axis=1))
        np.testing.assert_array_equal(after["keys"], before["keys"])


def test_test_vote_gives_the_batch_its_most_chosen_e_prompt():
    learner, model, images, backbone = _tiny()
    voted, _, _, _ = _tiny(test_vote=True)
    state = learner.init(jax.random.key(2), model.width).replace(task=jnp.int32(4))
    q = np.asarray(model.apply({"params": backbone}, images, tokens="cls"), np.float64)
    own = _cos(q, np.asarray(state.params["keys"], np.float64)).argmax(1)
    counts = np.bincount(own, minlength=4)
    major = max(range(4), key=lambda m: (counts[m], -m))  # most chosen; ties: the lower id
    want = learner.classify(state.params, backbone, images, jnp.full((5,), major, jnp.int32))
    np.testing.assert_allclose(voted.logits(state, backbone, images), want, rtol=1e-6)
    per_image = learner.classify(state.params, backbone, images, jnp.asarray(own, jnp.int32))
    np.testing.assert_allclose(learner.logits(state, backbone, images), per_image, rtol=1e-6)


def test_bad_layers_and_a_pool_smaller_than_the_tasks_are_refused():
    model = vit.tiny_vit(image_size=32)  # 2 blocks
    with pytest.raises(ValueError, match=r"disjoint blocks of the ViT \(0\.\.1\)"):
        DualPrompt(model=model)  # default E-layers 2-4
    with pytest.raises(ValueError, match="pool_size=3 is smaller than the run's 5 tasks"):
        DualPrompt(model=model, g_layers=(0,), e_layers=(1,), pool_size=3, num_tasks=5)


_config = learner_config("dualprompt", {"data.train_crop_scale": (0.5, 1.0)}, g_layers=(0,),
                         e_layers=(1,), epochs=3, batch_size=10, learning_rate=0.01, pool_size=4)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    run = train.Run(_config(), tmp_path_factory.mktemp("dual") / "run", progress=False)
    state0 = jax.device_get(run.learner_state.params)
    return run, run.run(), state0


def test_dualprompt_with_mist_trains_one_e_prompt_per_task(finished):
    run, results, state0 = finished
    assert learners.LEARNERS["dualprompt"] is DualPrompt
    assert [len(r) for r in results["acc_matrix"]] == [1, 2]
    assert all("mi_loss_per_epoch" in t and len(t["learner_loss_per_epoch"]) == 3
               for t in results["tasks"])
    p = jax.device_get(run.learner_state.params)
    assert int(run.learner_state.task) == 2
    # Two tasks: E-prompts 0 and 1 trained; 2 is 1's copy for the next task (shared pool);
    # 3 bitwise at init; only the keys of trained tasks moved.
    for name in ("e_key", "e_value"):
        for m in (0, 1):
            assert not np.array_equal(p[name][:, m], state0[name][:, m]), (name, m)
        np.testing.assert_array_equal(p[name][:, 2], p[name][:, 1])
        np.testing.assert_array_equal(p[name][:, 3], state0[name][:, 3])
    for m in range(4):
        assert np.array_equal(p["keys"][m], state0["keys"][m]) == (m >= 2), m


def test_dualprompt_stopped_inside_its_epochs_resumes_bitwise(finished, tmp_path):
    run, results, _ = finished
    # Task 0: 4 scoring batches, 4 MIST steps, then 3 epochs of 3 batches: boundary 13 is
    # epoch 1, batch 2.
    assert_resumes_bitwise(_config, run, results, tmp_path, 13, r"learner phase, epoch 1, batch 2")


def test_dualprompt_without_mist_keeps_the_backbone_bitwise(tmp_path):
    run_without_mist(_config, tmp_path)
