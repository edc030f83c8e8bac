"""EASE (mist_jax/learners/ease.py): the prototype complement and the reweighted classifier
against NumPy transcriptions of the reference code (``solve_sim_reset``, ``forward_reweight``),
the subspace features against explicit per-adapter forwards, and the learner end to end with
and without MIST (earlier adapters and the backbone frozen bitwise; a stopped run resumes
bitwise)."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest

from support.learner_runs import assert_resumes_bitwise, learner_config, run_without_mist  # noqa: E402

from mist_jax import learners  # noqa: E402
from mist_jax.runner import train
from mist_jax.learners.ease import Ease  # noqa: E402
from mist_jax.learners.subspaces import complement_prototypes, reweighted_logits
from mist_jax.learners.images import epoch_cosine, fit_on_images  # noqa: E402
from mist_jax.models import vit  # noqa: E402


def _cls_range(task, init_cls, inc):
    start = 0 if task == 0 else init_cls + (task - 1) * inc
    return start, init_cls if task == 0 else start + inc


def _cos(a, b):
    return a @ b / (np.linalg.norm(a) * np.linalg.norm(b))


def _solve_sim_reset(w, cur_task, init_cls, inc, out_dim):
    """The reference ``solve_sim_reset`` (use_init_ptm=False) on fc weights [C, T * D]."""
    w = w.copy()
    total = _cls_range(cur_task, init_cls, inc)[1]
    for task_id in range(cur_task):
        for dim_id in range(task_id + 1, cur_task + 1):
            start, end = _cls_range(task_id, init_cls, inc)
            sd, so = dim_id * out_dim, task_id * out_dim
            old = init_cls + (dim_id - 1) * inc
            a = w[old:total, so:so + out_dim]
            b = w[old:total, sd:sd + out_dim]
            a_hat = w[start:end, so:so + out_dim]
            sim = np.array([[_cos(a_hat[i], a[j]) for j in range(len(a))]
                            for i in range(len(a_hat))])
            sim = np.exp(sim) / np.exp(sim).sum(1, keepdims=True)
            w[start:end, sd:sd + out_dim] = sim @ b
    return w


def test_complement_matches_the_reference_solve_sim_reset():
    init_cls, inc, d, slots = 4, 3, 5, 4
    rng = np.random.default_rng(0)
    class_task = np.array([0] * 4 + [1] * 3 + [2] * 3 + [-1] * 2, np.int32)  # 3 tasks done
    protos = rng.normal(size=(12, slots, d)).astype(np.float32)
    got = np.asarray(complement_prototypes(jnp.asarray(protos), jnp.asarray(class_task),
                                           jnp.asarray(3)))
    w = protos[:10, :3].reshape(10, 3 * d).astype(np.float64)
    want = _solve_sim_reset(w, 2, init_cls, inc, d).reshape(10, 3, d)
    np.testing.assert_allclose(got[:10, :3], want, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(got[10:], protos[10:])  # unseen classes
    np.testing.assert_array_equal(got[:, 3], protos[:, 3])  # subspace of a later task


def _forward_reweight(x, w, cur_task, alpha, beta, init_cls, inc, out_dim, use_init_ptm):
    """The reference ``CosineLinear.forward_reweight`` (sigma 1) on x [N, S * D]."""
    unit = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)
    cols = []
    for i in range(cur_task + 1):
        start, end = _cls_range(i, init_cls, inc)
        out = 0.0
        for j in range(x.shape[1] // out_dim):
            lin = unit(x[:, j * out_dim:(j + 1) * out_dim]) @ unit(
                w[start:end, j * out_dim:(j + 1) * out_dim]).T
            if use_init_ptm and j == 0:
                out = out + beta * lin
            elif j != (i + 1 if use_init_ptm else i):
                out = out + alpha * lin / cur_task
            else:
                out = out + lin
        cols.append(out)
    return np.concatenate(cols, axis=1)


@pytest.mark.parametrize("ptm", [False, True])
def test_logits_match_the_reference_forward_reweight(ptm):
    init_cls, inc, d, tasks = 2, 3, 4, 4
    rng = np.random.default_rng(1)
    s = tasks + ptm
    done = 3
    feats = rng.normal(size=(5, s, d)).astype(np.float32)
    protos = rng.normal(size=(9, s, d)).astype(np.float32)
    class_task = np.array([0, 0, 1, 1, 1, 2, 2, 2, -1], np.int32)
    got = np.asarray(reweighted_logits(jnp.asarray(feats), jnp.asarray(protos),
                                       jnp.asarray(class_task), jnp.asarray(done), 0.3, 0.7, ptm))
    used = done + ptm  # the reference's fc has only the subspaces so far
    want = _forward_reweight(feats[:, :used].reshape(5, -1).astype(np.float64),
                             protos[:8, :used].reshape(8, -1).astype(np.float64),
                             done - 1, 0.3, 0.7, init_cls, inc, d, ptm)
    np.testing.assert_allclose(got[:, :8], want, rtol=1e-5, atol=1e-6)


def test_learning_rate_is_a_per_epoch_cosine_to_zero():
    # torch CosineAnnealingLR(T_max=4, eta_min=0) stepped per epoch: lr * (1 + cos(pi e / 4)) / 2
    schedule = epoch_cosine(0.05, 4, 3)
    got = [float(schedule(jnp.asarray(n))) for n in range(12)]
    want = [0.05 * (1 + np.cos(np.pi * (n // 3) / 4)) / 2 for n in range(12)]
    np.testing.assert_allclose(got, want, rtol=1e-6)


def _tiny(**kw):
    model = vit.ViT(width=16, depth=2, num_heads=2, mlp_dim=32, patch_size=4, image_size=8)
    learner = Ease(model=model, preprocess=lambda x: x, num_classes=6, num_tasks=3,
                   adapter_dim=4, **kw)
    images = jax.random.uniform(jax.random.key(0), (5, 8, 8, 3))
    return learner, model, model.init(jax.random.key(1), images)["params"], images


@pytest.mark.parametrize("ptm", [False, True])
def test_embed_concatenates_the_features_of_each_stored_adapter(ptm):
    learner, model, backbone, images = _tiny(use_init_ptm=ptm)
    state = learner.init(jax.random.key(2), model.width)
    rng = np.random.default_rng(3)  # NumPy: no per-leaf compiles
    noisy = jax.tree.map(lambda a: rng.normal(size=a.shape).astype(np.float32),
                         jax.device_get(state.adapters))
    state = state.replace(adapters=noisy, num_done=jnp.asarray(2, jnp.int32))
    got = np.asarray(learner.embed(state, backbone, images))
    parts = [model.apply({"params": backbone}, images, tokens="cls")] if ptm else []
    for t in range(2):
        blocks = {i: jax.tree.map(lambda a: a[t, i], noisy) for i in range(model.depth)}
        ext = vit.Extensions(adapters=blocks, adapter_mode="parallel_residual", adapter_scale=0.1)
        parts.append(model.apply({"params": backbone}, images, ext=ext, tokens="cls"))
    parts.append(jnp.zeros((5, model.width)))  # slot 2: not trained yet
    np.testing.assert_allclose(got, np.concatenate([np.asarray(p) for p in parts], 1),
                               rtol=1e-5, atol=1e-6)


def test_a_zero_up_projection_leaves_the_backbone_features():
    learner, model, backbone, images = _tiny()
    adapter = learner.init(jax.random.key(2), model.width).params["adapter"]
    assert not np.any(np.asarray(adapter["up"]["kernel"]))
    np.testing.assert_array_equal(np.asarray(learner.cls(backbone, images, adapter)),
                                  np.asarray(model.apply({"params": backbone}, images)))


def test_a_later_task_leaves_earlier_adapters_and_the_backbone_bitwise():
    learner, model, backbone, images = _tiny(epochs=2, learning_rate=0.5)
    images = jax.random.uniform(jax.random.key(4), (12, 8, 8, 3))
    state = learner.init(jax.random.key(2), model.width)
    backbone0 = jax.device_get(backbone)

    def task(state, start):
        labels = jnp.asarray(start + np.arange(12) % 2, jnp.int32)
        batches = lambda e, b: [(images[:6], labels[:6]), (images[6:], labels[6:])][b:]
        state, losses, _ = fit_on_images(learner, state, backbone, batches, (start, start + 2))
        feats = learner.embed(state, backbone, images)
        return learner.fit_features(state, feats, labels, (start, start + 2)), losses

    state, _ = task(state, 0)
    after0 = jax.device_get(state)
    state, losses = task(state, 2)
    assert np.all(np.isfinite(losses))
    for name in ("down", "up"):
        for leaf in ("kernel", "bias"):
            slots = np.asarray(state.adapters[name][leaf])
            np.testing.assert_array_equal(slots[0], after0.adapters[name][leaf][0])
            assert not np.array_equal(slots[1], after0.params["adapter"][name][leaf]), name
    np.testing.assert_array_equal(np.asarray(state.prototypes[:2, 0]), after0.prototypes[:2, 0])
    assert np.abs(np.asarray(state.prototypes[:2, 1])).sum() > 0  # complemented
    assert list(np.asarray(state.class_task)) == [0, 0, 1, 1, -1, -1]
    assert all(jax.tree.leaves(jax.tree.map(np.array_equal, backbone0, jax.device_get(backbone))))


def test_bad_config_and_missing_run_fields_are_refused():
    with pytest.raises(ValueError, match="adapter_dim"):
        Ease(adapter_dim=0)
    with pytest.raises(ValueError, match="num_tasks"):
        Ease(model=vit.ViT(width=16, depth=1, num_heads=2, mlp_dim=32, patch_size=4,
                           image_size=8)).init(jax.random.key(0), 16)


_config = learner_config("ease", epochs=2, batch_size=10, adapter_dim=8)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    run = train.Run(_config(), tmp_path_factory.mktemp("ease") / "run", progress=False)
    return run, run.run()


def test_ease_with_mist_trains_an_adapter_per_task(finished):
    run, results = finished
    assert learners.LEARNERS["ease"] is Ease
    assert [len(r) for r in results["acc_matrix"]] == [1, 2]
    for task in results["tasks"]:
        assert len(task["learner_loss_per_epoch"]) == 2
        assert "mi_loss_per_epoch" in task  # MIST tuned the backbone before EASE
    state = jax.device_get(run.learner_state)
    assert int(state.num_done) == 2 and np.all(state.class_task == np.repeat([0, 1], 5))
    assert all(np.abs(state.adapters["up"]["kernel"][t]).sum() > 0 for t in range(2))


def test_ease_stopped_inside_its_epochs_resumes_bitwise(finished, tmp_path):
    run, results = finished
    # Task 0: 4 scoring batches, 4 MIST steps, then EASE's 2 epochs of 3 batches: boundary 13
    # is epoch 1, batch 2.
    assert_resumes_bitwise(_config, run, results, tmp_path, 13, r"learner phase, epoch 1, batch 2")


def test_ease_without_mist_keeps_the_backbone_bitwise(tmp_path):
    _, results = run_without_mist(_config, tmp_path)
    assert [len(r) for r in results["acc_matrix"]] == [1, 2]
