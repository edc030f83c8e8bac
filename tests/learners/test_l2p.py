"""L2P (mist_jax/learners/l2p.py): key-query selection against a NumPy brute force, the loss
against a NumPy transcription of paper Eq. 5, and the learner end to end with and without
MIST (backbone frozen bitwise while the prompts train; a stopped run resumes bitwise)."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest

from support.learner_runs import assert_resumes_bitwise, learner_config, run_without_mist  # noqa: E402

from mist_jax import learners  # noqa: E402
from mist_jax.runner import train
from mist_jax.learners.l2p import L2P  # noqa: E402
from mist_jax.learners.prompting import select_prompts  # noqa: E402
from mist_jax.models import vit  # noqa: E402


def _cos_numpy(q, k):
    out = np.zeros((len(q), len(k)))
    for b in range(len(q)):
        for m in range(len(k)):
            out[b, m] = q[b] @ k[m] / (np.linalg.norm(q[b]) * np.linalg.norm(k[m]))
    return out


def test_top_k_selection_matches_a_brute_force():
    rng = np.random.default_rng(0)
    q, k = rng.normal(size=(6, 8)), rng.normal(size=(10, 8))
    ids, cos = select_prompts(jnp.asarray(q, jnp.float32), jnp.asarray(k, jnp.float32), 3,
                              batchwise=False)
    want = _cos_numpy(q, k)
    np.testing.assert_allclose(np.asarray(cos), want, atol=1e-6)
    for b in range(6):  # the 3 largest cosines, largest first
        assert list(np.asarray(ids[b])) == sorted(range(10), key=lambda m: -want[b, m])[:3]


def test_batchwise_selection_is_the_batch_majority_vote():
    rng = np.random.default_rng(1)
    q, k = rng.normal(size=(16, 8)), rng.normal(size=(10, 8))
    ids, _ = select_prompts(jnp.asarray(q, jnp.float32), jnp.asarray(k, jnp.float32), 4,
                            batchwise=True)
    own = np.argsort(-_cos_numpy(q, k), axis=1)[:, :4]
    counts = np.bincount(own.reshape(-1), minlength=10)
    vote = sorted(range(10), key=lambda m: (-counts[m], m))[:4]  # most chosen, ties: lower id
    assert np.asarray(ids).shape == (16, 4)
    for row in np.asarray(ids):
        assert list(row) == vote


def _tiny_l2p(**kw):
    model = vit.ViT(width=16, depth=2, num_heads=2, mlp_dim=32, patch_size=4, image_size=8)
    return L2P(model=model, preprocess=lambda x: x, num_classes=6, pool_size=5, length=2,
               top_k=2, **kw), model


def test_loss_is_masked_cross_entropy_minus_the_pull_term():
    learner, model = _tiny_l2p(pull_coeff=0.3, batchwise_prompt=False)
    images = jax.random.uniform(jax.random.key(0), (4, 8, 8, 3))
    backbone = model.init(jax.random.key(1), images)["params"]
    state = learner.init(jax.random.key(2), model.width)
    labels, task = jnp.array([2, 3, 3, 2]), jnp.array([2, 4])
    got = float(learner.loss(state.params, state, backbone, images, labels, task))

    p = jax.device_get(state.params)
    q = np.asarray(model.apply({"params": backbone}, images, tokens="cls"), np.float64)
    cos = _cos_numpy(q, p["keys"])
    ids = np.argsort(-cos, axis=1)[:, :2]
    ce, pull = 0.0, 0.0
    for b in range(4):
        prompts = p["prompts"][ids[b]].reshape(-1, model.width)  # 2 prompts x 2 tokens
        tokens = model.apply({"params": backbone}, images[b:b + 1],
                             ext=vit.Extensions(prompts=prompts), tokens="prompts")
        logit = np.asarray(tokens[0], np.float64).mean(0) @ p["kernel"] + p["bias"]
        z = logit[2:4]  # the train mask keeps the task's classes 2, 3
        ce += np.log(np.exp(z - z.max()).sum()) + z.max() - logit[labels[b]]
        pull += cos[b, ids[b]].sum()
    np.testing.assert_allclose(got, ce / 4 - 0.3 * pull / 4, rtol=1e-4, atol=1e-5)


def test_gradients_reach_prompts_keys_and_head_not_through_the_query():
    learner, model = _tiny_l2p(batchwise_prompt=False)
    images = jax.random.uniform(jax.random.key(0), (4, 8, 8, 3))
    backbone = model.init(jax.random.key(1), images)["params"]
    state = learner.init(jax.random.key(2), model.width)
    grads = jax.grad(learner.loss)(state.params, state, backbone, images, jnp.array([0, 1, 0, 1]),
                                   jnp.array([0, 2]))
    for name in ("prompts", "keys", "kernel", "bias"):
        assert np.abs(np.asarray(grads[name])).sum() > 0, name
    # Only the chosen prompts and keys (<= 4 images x 2 of 5) get gradient.
    chosen = np.abs(np.asarray(grads["keys"])).sum(1) > 0
    assert 1 <= chosen.sum() <= 5
    np.testing.assert_array_equal(np.abs(np.asarray(grads["prompts"])).sum((1, 2)) > 0, chosen)


def test_prompt_tokens_get_no_position_embedding():
    """google-research/l2p prepends prompts after AddPositionEmbs: without a position, swapping
    two prompt tokens only swaps their outputs (a position embedding would change them)."""
    _, model = _tiny_l2p()
    images = jax.random.uniform(jax.random.key(0), (2, 8, 8, 3))
    backbone = model.init(jax.random.key(1), images)["params"]
    prompts = jax.random.normal(jax.random.key(3), (2, 3, model.width))
    out = lambda p: np.asarray(model.apply({"params": backbone}, images,
                                           ext=vit.Extensions(prompts=p), tokens="prompts"))
    swapped = prompts[:, ::-1]
    np.testing.assert_allclose(out(swapped), out(prompts)[:, ::-1], rtol=1e-5, atol=1e-6)


def test_test_vote_gives_the_batch_its_most_chosen_prompts():
    """``test_vote``: LAMDA-PILOT's batchwise selection at test time; default: per image."""
    images = jax.random.uniform(jax.random.key(0), (6, 8, 8, 3))
    own, model = _tiny_l2p()
    voted, _ = _tiny_l2p(test_vote=True)
    backbone = model.init(jax.random.key(1), images)["params"]
    state = own.init(jax.random.key(2), model.width)
    p = state.params
    per_image = own.forward(p, backbone, images, batchwise=False)[0]
    batch = own.forward(p, backbone, images, batchwise=True)[0]
    np.testing.assert_array_equal(own.logits(state, backbone, images), per_image)
    np.testing.assert_array_equal(voted.logits(state, backbone, images), batch)
    assert not np.allclose(per_image, batch)  # the switch changes what this batch sees


def test_gradients_are_clipped_at_global_norm_one_by_default():
    """Adam's first moment after one step is (1 - b1) times the clipped gradient:
    0.1 * g / |g| for |g| > 1 (google-research/l2p grad_clip_max_norm = 1.0), 0.1 * g off."""
    g = {"a": jnp.array([3.0, 4.0]), "b": jnp.array([12.0])}  # global norm 13
    for clip, scale in ((1.0, 1 / 13), (0.0, 1.0), (20.0, 1.0)):
        learner, _ = _tiny_l2p(clip_grad_norm=clip)
        tx = learner.optimizer(steps_per_epoch=1)
        params = jax.tree.map(jnp.zeros_like, g)
        _, opt_state = tx.update(g, tx.init(params), params)
        mu = next(s for s in jax.tree.leaves(opt_state, is_leaf=lambda x: hasattr(x, "mu"))
                  if hasattr(s, "mu")).mu
        np.testing.assert_allclose(mu["a"], 0.1 * scale * np.array([3.0, 4.0]), rtol=1e-6)
        np.testing.assert_allclose(mu["b"], 0.1 * scale * np.array([12.0]), rtol=1e-6)
    with pytest.raises(ValueError, match="clip_grad_norm must be >= 0"):
        _tiny_l2p(clip_grad_norm=-1.0)[0].optimizer(1)


def test_bad_top_k_is_refused():
    with pytest.raises(ValueError, match="top_k must be in"):
        L2P(pool_size=3, top_k=4)


_config = learner_config("l2p", {"data.train_crop_scale": (0.5, 1.0)}, epochs=3, batch_size=10,
                         learning_rate=0.01)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    run = train.Run(_config(), tmp_path_factory.mktemp("l2p") / "run", progress=False)
    state0 = jax.device_get(run.learner_state.params)
    return run, run.run(), state0


def test_l2p_with_mist_trains_prompts_and_keys(finished):
    run, results, state0 = finished
    assert learners.LEARNERS["l2p"] is L2P
    assert [len(r) for r in results["acc_matrix"]] == [1, 2]
    for task in results["tasks"]:
        assert len(task["learner_loss_per_epoch"]) == 3
        assert "mi_loss_per_epoch" in task  # MIST tuned the backbone before L2P
    params = jax.device_get(run.learner_state.params)
    for name in ("prompts", "keys", "kernel"):
        assert not np.array_equal(params[name], state0[name]), name


def test_l2p_stopped_inside_its_epochs_resumes_bitwise(finished, tmp_path):
    run, results, _ = finished
    # Task 0: 4 scoring batches, 4 MIST steps, then L2P's 3 epochs of 3 batches: boundary 11
    # is epoch 0, batch 3.
    assert_resumes_bitwise(_config, run, results, tmp_path, 11, r"learner phase, epoch 0, batch 3")


def test_l2p_without_mist_keeps_the_backbone_bitwise(tmp_path):
    run_without_mist(_config, tmp_path)
