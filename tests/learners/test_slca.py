"""SLCA (mist_jax/learners/slca.py): class statistics against NumPy (unbiased covariance, as
the reference's ``torch.cov``), the sampler's moments, the CA loss against a NumPy
transcription of the reference's logit normalisation, one slow-learner optimizer step against
hand-computed SGD, the milestone schedule, and the learner end to end with and without MIST (the
backbone moves; a run stopped inside its epochs resumes bitwise)."""


import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from support.learner_runs import assert_resumes_bitwise, learner_config  # noqa: E402

from mist_jax import learners  # noqa: E402
from mist_jax.runner import train
from mist_jax.learners import alignment  # noqa: E402
from mist_jax.learners.slca import Slca  # noqa: E402
from mist_jax.models import vit  # noqa: E402


def test_class_statistics_match_numpy_with_ddof_1_and_the_ridge():
    rng = np.random.default_rng(0)
    feats = rng.normal(size=(40, 5)) * [1, 2, 3, 0.5, 1] + 3.0
    labels = np.repeat([7, 8, 9], [10, 17, 13])
    means, covs = alignment.class_statistics(jnp.asarray(feats, jnp.float32),
                                        jnp.asarray(labels, jnp.int32), 7, 3, 1e-4)
    for k, c in enumerate((7, 8, 9)):
        x = feats[labels == c]
        np.testing.assert_allclose(means[k], x.mean(0), rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(covs[k], np.cov(x.T, ddof=1) + 1e-4 * np.eye(5),
                                   rtol=1e-4, atol=1e-5)


def test_sampled_features_have_the_class_mean_and_covariance():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(2, 3, 3))
    cov = a @ a.transpose(0, 2, 1) + 0.1 * np.eye(3)
    mean = rng.normal(size=(2, 3))
    n = 20000
    x = np.asarray(alignment.sample_features(jax.random.PRNGKey(0), jnp.asarray(mean, jnp.float32),
                                        jnp.linalg.cholesky(jnp.asarray(cov, jnp.float32)), n))
    assert x.shape == (2, n, 3)
    for k in range(2):
        std = np.sqrt(np.diag(cov[k]) / n)  # standard error of the sample mean
        assert np.all(np.abs(x[k].mean(0) - mean[k]) < 5 * std)
        # Sample covariance: standard error ~ sqrt((s_ii s_jj + s_ij^2) / n).
        se = np.sqrt((np.outer(np.diag(cov[k]), np.diag(cov[k])) + cov[k] ** 2) / n)
        assert np.all(np.abs(np.cov(x[k].T) - cov[k]) < 5 * se)


def _ca_loss_numpy(kernel, bias, x, y, task_sizes, tau):
    """The reference's _stage2_compact_classifier loss, transcribed in float64."""
    z = x @ kernel + bias
    if tau > 0:
        norms, prev = [], 0
        for size in task_sizes:
            norms.append(np.linalg.norm(z[:, prev:prev + size], axis=-1) + 1e-7)
            prev += size
        z = z / np.mean(norms, axis=0)[:, None] / tau
    top = z.max(-1)
    lse = np.log(np.exp(z - top[:, None]).sum(-1)) + top
    return np.mean(lse - z[np.arange(len(y)), y])


@pytest.mark.parametrize("tau", [0.1, 0.0])
def test_alignment_loss_matches_the_reference_transcription(tau):
    rng = np.random.default_rng(2)
    kernel, bias = rng.normal(size=(6, 7)), rng.normal(size=7)
    x, y = rng.normal(size=(9, 6)), rng.integers(0, 7, size=9)
    tasks = np.array([0, 0, 0, 1, 1, 2, 2])  # task sizes 3, 2, 2
    head = {"kernel": jnp.asarray(kernel, jnp.float32), "bias": jnp.asarray(bias, jnp.float32)}
    got = alignment.alignment_loss(head, jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.int32),
                              jnp.asarray(tasks, jnp.int32), 3, tau)
    np.testing.assert_allclose(float(got), _ca_loss_numpy(kernel, bias, x, y, (3, 2, 2), tau),
                               rtol=1e-5)


def _tiny(**kw):
    model = vit.ViT(width=16, depth=2, num_heads=2, mlp_dim=32, patch_size=4, image_size=8)
    return Slca(model=model, preprocess=lambda x: x, num_classes=6, **kw), model


def test_one_step_moves_the_backbone_slowly_and_only_the_task_head():
    learner, model = _tiny(learning_rate=0.1, bcb_lrscale=0.01, weight_decay=0.05)
    images = jax.random.uniform(jax.random.key(0), (4, 8, 8, 3))
    backbone = jax.jit(model.init)(jax.random.key(1), images)["params"]
    # A "pre-trained" final norm that SLCA must not use (it trains a fresh one).
    backbone["encoder_norm"] = {"scale": 2 + jax.random.uniform(jax.random.key(3), (16,)),
                                "bias": jax.random.normal(jax.random.key(4), (16,))}
    state = learner.init(jax.random.key(2), model.width)
    labels, task = jnp.array([2, 3, 3, 2]), jnp.array([2, 4])
    params = {"params": state.params, "backbone": backbone}
    tx = learner.optimizer(steps_per_epoch=3)

    @jax.jit
    def step(p):
        grads = jax.grad(lambda q: learner.loss(q["params"], state, q["backbone"], images,
                                                labels, task))(p)
        return optax.apply_updates(p, tx.update(grads, tx.init(p), p)[0])

    new = step(params)

    def ce(p):  # the task's cross-entropy, written out (no weight decay)
        x = model.apply({"params": p["backbone"]}, images, tokens="cls")  # pre-trained norm
        g, b = p["backbone"]["encoder_norm"]["scale"], p["backbone"]["encoder_norm"]["bias"]
        standardised = (x - b) / g  # (CLS - mean) / sqrt(var + eps) before any affine
        f = standardised * p["params"]["norm"]["scale"] + p["params"]["norm"]["bias"]
        z = (f @ p["params"]["head"]["kernel"] + p["params"]["head"]["bias"])[:, 2:4]
        return jnp.mean(jax.nn.logsumexp(z, -1) - z[jnp.arange(4), labels - 2])

    g = jax.jit(jax.grad(ce))(params)
    # First SGD step (momentum buffer = gradient): w - lr * (g + wd * w), torch's coupled decay;
    # the backbone and SLCA's norm at the slow rate; the pre-trained encoder_norm is not used.
    slow = lambda w, d: w - 0.1 * 0.01 * (d + 0.05 * w)
    want_bb = dict(jax.tree.map(slow, backbone, g["backbone"]),
                   encoder_norm=backbone["encoder_norm"])
    for got, want in zip(jax.tree.leaves(new["backbone"]), jax.tree.leaves(want_bb)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
    norm0 = {"scale": np.ones(16), "bias": np.zeros(16)}
    for key in norm0:
        np.testing.assert_allclose(new["params"]["norm"][key],
                                   slow(norm0[key], g["params"]["norm"][key]), rtol=1e-5, atol=1e-7)
    k0, k1 = np.asarray(state.params["head"]["kernel"]), np.asarray(new["params"]["head"]["kernel"])
    gk = np.asarray(g["params"]["head"]["kernel"])
    np.testing.assert_allclose(k1[:, 2:4], k0[:, 2:4] - 0.1 * (gk[:, 2:4] + 0.05 * k0[:, 2:4]),
                               rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(np.delete(k1, [2, 3], axis=1), np.delete(k0, [2, 3], axis=1))
    # The decay term adds gradient, not value: the loss is the cross-entropy.
    loss = jax.jit(learner.loss)(state.params, state, backbone, images, labels, task)
    np.testing.assert_allclose(float(loss), float(jax.jit(ce)(params)), rtol=1e-6)


def test_lamda_pilot_variant_trains_the_pretrained_norm_with_the_backbone():
    """fresh_norm=False (LAMDA-PILOT's port): the features are the backbone's own CLS output
    (pre-trained final norm), and one SGD step moves that norm at the slow rate with coupled
    decay, as every other backbone weight; SLCA's own norm is left as it is."""
    learner, model = _tiny(learning_rate=0.1, bcb_lrscale=0.01, weight_decay=0.05,
                           fresh_norm=False)
    images = jax.random.uniform(jax.random.key(0), (4, 8, 8, 3))
    backbone = jax.jit(model.init)(jax.random.key(1), images)["params"]
    backbone["encoder_norm"] = {"scale": 2 + jax.random.uniform(jax.random.key(3), (16,)),
                                "bias": jax.random.normal(jax.random.key(4), (16,))}
    state = learner.init(jax.random.key(2), model.width)
    labels, task = jnp.array([0, 1, 1, 0]), jnp.array([0, 2])
    params = {"params": state.params, "backbone": backbone}
    np.testing.assert_allclose(
        learner.embed(state, backbone, images),
        model.apply({"params": backbone}, images, tokens="cls"), rtol=1e-6)

    def ce(p):  # written out: the pre-trained norm, the task's two columns
        x = model.apply({"params": p["backbone"]}, images, tokens="cls")
        z = (x @ p["params"]["head"]["kernel"] + p["params"]["head"]["bias"])[:, 0:2]
        return jnp.mean(jax.nn.logsumexp(z, -1) - z[jnp.arange(4), labels])

    tx = learner.optimizer(steps_per_epoch=3)
    grads = jax.grad(lambda q: learner.loss(q["params"], state, q["backbone"], images,
                                            labels, task))(params)
    new = optax.apply_updates(params, tx.update(grads, tx.init(params), params)[0])
    g = jax.grad(ce)(params)["backbone"]["encoder_norm"]
    assert float(jnp.abs(g["scale"]).max()) > 0
    for key in ("scale", "bias"):
        w = backbone["encoder_norm"][key]
        np.testing.assert_allclose(new["backbone"]["encoder_norm"][key],
                                   w - 0.1 * 0.01 * (g[key] + 0.05 * w), rtol=1e-5, atol=1e-7)
        np.testing.assert_array_equal(new["params"]["norm"][key], state.params["norm"][key])


def test_milestones_decay_both_learning_rates_per_epoch():
    learner, _ = _tiny(learning_rate=1.0, bcb_lrscale=0.01, momentum=0.0, milestones=(1, 2),
                       lr_decay=0.5)
    tx = learner.optimizer(steps_per_epoch=2)
    params = {"params": {"head": {"w": jnp.zeros(())}, "norm": {"w": jnp.zeros(())}},
              "backbone": {"w": jnp.zeros(())}}
    grads = jax.tree.map(jnp.ones_like, params)
    opt_state, steps = tx.init(params), []
    for _ in range(6):
        updates, opt_state = tx.update(grads, opt_state, params)
        steps.append((float(updates["params"]["head"]["w"]), float(updates["backbone"]["w"]),
                      float(updates["params"]["norm"]["w"])))
    want = [(-1, -0.01, -0.01)] * 2 + [(-0.5, -0.005, -0.005)] * 2 + [(-0.25, -0.0025, -0.0025)] * 2
    np.testing.assert_allclose(steps, want, rtol=1e-6)


def test_alignment_trains_seen_columns_only_and_separates_the_classes():
    rng = np.random.default_rng(3)
    d, c = 4, 6
    means = np.zeros((c, d), np.float32)
    means[:4] = 4 * np.eye(d)[:4]
    covs = np.stack([0.1 * np.eye(d)] * c).astype(np.float32)
    tasks = np.array([0, 0, 1, 1, -1, -1], np.int32)
    head = {"kernel": jnp.asarray(rng.normal(size=(d, c)) * 0.02, jnp.float32),
            "bias": jnp.zeros(c, jnp.float32)}
    aligned = alignment.align_classifier(
        head, jnp.asarray(means), jnp.asarray(covs), jnp.asarray(tasks), jax.random.PRNGKey(0),
        num_seen=4, num_tasks=2, epochs=3, samples=64, learning_rate=0.01, momentum=0.9,
        weight_decay=5e-4, tau=0.1)
    np.testing.assert_array_equal(aligned["kernel"][:, 4:], head["kernel"][:, 4:])
    z = means[:4] @ np.asarray(aligned["kernel"])[:, :4] + np.asarray(aligned["bias"])[:4]
    assert list(z.argmax(-1)) == [0, 1, 2, 3]


def test_bad_config_values_are_refused():
    with pytest.raises(ValueError, match="learner.slca.bcb_lrscale must be >= 0"):
        Slca(bcb_lrscale=-1)
    with pytest.raises(ValueError, match="learner.slca.milestones must be strictly increasing"):
        Slca(milestones=(3, 3))


_config = learner_config("slca", {"data.train_crop_scale": (0.5, 1.0)}, epochs=2, batch_size=10,
                         milestones=(1,), ca_epochs=2, num_sampled_pcls=32)


def _changed(a, b):
    return any(jax.tree.leaves(jax.tree.map(lambda x, y: not np.array_equal(x, y), a, b)))


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    run = train.Run(_config(), tmp_path_factory.mktemp("slca") / "run", progress=False)
    return run, run.run()


def test_slca_with_mist_trains_the_backbone_and_aligns_the_head(finished):
    run, results = finished
    assert learners.LEARNERS["slca"] is Slca
    assert [len(r) for r in results["acc_matrix"]] == [1, 2]
    assert np.all(np.isfinite(results["acc_matrix"][-1]))
    for task in results["tasks"]:
        assert len(task["learner_loss_per_epoch"]) == 2
        assert np.all(np.isfinite(task["learner_loss_per_epoch"]))
        assert "mi_loss_per_epoch" in task  # MIST tuned the backbone before SLCA
    state = run.learner_state
    np.testing.assert_array_equal(state.task_of_class, [0] * 5 + [1] * 5)
    assert _changed(state.aligned, state.params["head"])  # CA after task 1
    assert np.all(np.isfinite(np.asarray(state.covs)))


def test_slca_stopped_inside_its_epochs_resumes_bitwise(finished, tmp_path):
    run, results = finished
    # Task 0: 4 scoring batches, 4 MIST steps, 2 epochs x 3 batches, the check after the task
    # (15 boundaries); task 1: 8 MIST boundaries, then boundary 25 is epoch 0, batch 2.
    assert_resumes_bitwise(_config, run, results, tmp_path, 25,
                           r"task 1 \(learner phase, epoch 0, batch 2", backbone=True)


def test_slca_without_mist_moves_the_backbone(tmp_path):
    run = train.Run(_config(**{"mist.enabled": False}), tmp_path / "plain", progress=False)
    backbone0 = jax.device_get(run.params["backbone"])
    results = run.run()
    assert "mi_loss_per_epoch" not in results["tasks"][0]
    assert np.all(np.isfinite(results["acc_matrix"][-1]))
    assert _changed(backbone0, jax.device_get(run.params["backbone"]))
