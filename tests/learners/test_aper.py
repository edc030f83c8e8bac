"""APER (mist_jax/learners/aper.py): the adapter (zero up-projection) and SSF (scale 1, shift 0)
start as the identity, the merged feature is the two forwards concatenated, prototypes and
logits against NumPy, the learning rate against torch's CosineAnnealingLR formula, and the
learner end to end with and without MIST (module trained on the first task only, backbone
frozen bitwise without MIST, a stopped run resumes bitwise)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from support.learner_runs import assert_resumes_bitwise, learner_config  # noqa: E402

from mist_jax import learners  # noqa: E402
from mist_jax.runner import train
from mist_jax.learners.aper import Aper  # noqa: E402
from mist_jax.models import extensions, vit  # noqa: E402


def _tiny(module="adapter", **kw):
    model = vit.ViT(width=16, depth=2, num_heads=2, mlp_dim=32, patch_size=4, image_size=8)
    learner = Aper(model=model, preprocess=lambda x: x, num_classes=6, module=module, adapter_dim=4,
                   **kw)
    images = jax.random.uniform(jax.random.key(0), (3, 8, 8, 3))
    backbone = model.init(jax.random.key(1), images)["params"]
    return learner, model, images, backbone


@pytest.mark.parametrize("module", ["adapter", "ssf", "finetune"])
def test_module_at_identity_init_leaves_the_features_unchanged(module):
    learner, model, images, backbone = _tiny(module)
    state = learner.init(jax.random.key(2), model.width)
    identity = {"adapter": state.params["module"], "ssf": extensions.init_ssf(model),
                "finetune": state.params["module"]}[module]
    if module == "finetune":  # a zero delta for every backbone weight
        assert jax.tree.structure(identity) == jax.tree.structure(backbone)
        assert not any(np.any(d) for d in jax.tree.leaves(identity))
    if module == "adapter":  # zero up-projection: the adapter branch adds exactly 0
        assert all(not np.any(a["up"]["kernel"]) for a in identity.values())
    plain = model.apply({"params": backbone}, images, tokens="cls")
    np.testing.assert_array_equal(np.asarray(learner.adapted(identity, backbone, images)),
                                  np.asarray(plain))


def test_merged_feature_is_plain_then_adapted():
    learner, model, images, backbone = _tiny("vpt_shallow", prompt_token_num=3)
    state = learner.init(jax.random.key(2), model.width)
    prompts = state.params["module"]
    bound = math.sqrt(6 / (3 * 4 ** 2 + 16))  # VPT's init range for patch 4, width 16
    assert prompts.shape == (3, 16) and np.abs(np.asarray(prompts)).max() <= bound
    plain = model.apply({"params": backbone}, images, tokens="cls")
    adapted = model.apply({"params": backbone}, images, ext=vit.Extensions(prompts=prompts),
                          tokens="cls")
    want = np.concatenate([np.asarray(plain), np.asarray(adapted)], axis=1)
    np.testing.assert_allclose(np.asarray(learner.embed(state, backbone, images)), want,
                               rtol=1e-6, atol=1e-6)


def test_vpt_deep_has_prompts_per_block_in_the_vpt_range():
    learner, model, images, backbone = _tiny("vpt_deep", prompt_token_num=3)
    prompts = learner.init(jax.random.key(2), model.width).params["module"]
    bound = math.sqrt(6 / (3 * 4 ** 2 + 16))
    assert prompts.shape == (2, 3, 16) and np.abs(np.asarray(prompts)).max() <= bound
    want = model.apply({"params": backbone}, images, ext=vit.Extensions(deep_prompts=prompts),
                       tokens="cls")
    np.testing.assert_array_equal(np.asarray(learner.adapted(prompts, backbone, images)),
                                  np.asarray(want))


def test_finetune_step_is_torch_sgd_on_the_full_weights():
    learner, model, images, backbone = _tiny("finetune", learning_rate=0.1, weight_decay=0.05)
    state = learner.init(jax.random.key(2), model.width)
    labels, task = jnp.array([0, 1, 1]), jnp.array([0, 2])
    tx = learner.optimizer(steps_per_epoch=1)
    grads = jax.grad(learner.loss)(state.params, state, backbone, images, labels, task)
    new = optax.apply_updates(state.params, tx.update(grads, tx.init(state.params),
                                                      state.params)[0])

    def ce(weights):  # cosine-head cross-entropy over classes 0-1 on the full weights
        f = model.apply({"params": weights}, images, tokens="cls")
        w = np.asarray(state.params["head"]["weight"])[:2]  # [2, D]
        w = w / np.linalg.norm(w, axis=1, keepdims=True)
        z = (f / jnp.linalg.norm(f, axis=1, keepdims=True)) @ w.T
        return jnp.mean(jax.nn.logsumexp(z, -1) - z[jnp.arange(3), labels])

    g = jax.grad(ce)(backbone)
    # First torch SGD step from delta = 0: delta = -lr * (g + wd * (w0 + 0)).
    want = jax.tree.map(lambda gw, w0: -0.1 * (gw + 0.05 * w0), g, backbone)
    for got, exp in zip(jax.tree.leaves(new["module"]), jax.tree.leaves(want)):
        np.testing.assert_allclose(got, exp, rtol=1e-4, atol=1e-7)
    loss = learner.loss(state.params, state, backbone, images, labels, task)
    np.testing.assert_allclose(float(loss), float(ce(backbone)), rtol=1e-6)  # decay adds no value


def test_prototypes_are_class_means_and_logits_cosines():
    learner, model, images, backbone = _tiny()
    state = learner.init(jax.random.key(2), model.width)
    rng = np.random.default_rng(0)
    feats, labels = rng.normal(size=(9, 32)).astype(np.float32), np.array([2, 3, 2, 3, 3, 2, 2,
                                                                              3, 3])
    state = learner.fit_features(state, feats, labels, (2, 4))
    protos = np.asarray(state.prototypes)
    np.testing.assert_allclose(protos[2], feats[labels == 2].mean(0), rtol=1e-5)
    np.testing.assert_allclose(protos[3], feats[labels == 3].mean(0), rtol=1e-5)
    assert not protos[[0, 1, 4, 5]].any()
    emb = np.asarray(learner.embed(state, backbone, images), np.float64)
    want = (emb @ protos[2].T) / (np.linalg.norm(emb, axis=1) * np.linalg.norm(protos[2]))
    np.testing.assert_allclose(np.asarray(learner.logits(state, backbone, images))[:, 2], want,
                               rtol=1e-5)


def test_learning_rate_follows_cosine_annealing_per_epoch():
    learner = Aper(epochs=4, learning_rate=0.1, min_lr=0.01, momentum=0.0, weight_decay=0.0)
    tx = learner.optimizer(steps_per_epoch=3)
    params = {"w": jnp.zeros(())}
    opt = tx.init(params)
    for step in range(12):
        update, opt = tx.update({"w": jnp.ones(())}, opt, params)
        epoch = step // 3  # torch: eta_min + (lr - eta_min) * (1 + cos(pi * e / T_max)) / 2
        want = 0.01 + 0.09 * (1 + math.cos(math.pi * epoch / 4)) / 2
        assert float(update["w"]) == pytest.approx(-want, rel=1e-6)


def test_first_task_only_and_bad_module_is_refused():
    learner = Aper(epochs=3)
    assert learner.train_epochs((0, 5)) == 3 and learner.train_epochs((5, 10)) == 0
    with pytest.raises(ValueError, match="learner.aper.module must be one of"):
        Aper(module="lora")


_config = learner_config("aper", epochs=2, batch_size=10, adapter_dim=4)


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    run = train.Run(_config(), tmp_path_factory.mktemp("aper") / "run", progress=False)
    state0 = jax.device_get(run.learner_state.params)
    return run, run.run(), state0


def test_aper_with_mist_trains_its_module_on_the_first_task_only(finished):
    run, results, state0 = finished
    assert learners.LEARNERS["aper"] is Aper
    assert [len(r) for r in results["acc_matrix"]] == [1, 2]
    assert [len(t["learner_loss_per_epoch"]) for t in results["tasks"]] == [2, 0]
    assert all("mi_loss_per_epoch" in t for t in results["tasks"])  # MIST on every task
    params = jax.device_get(run.learner_state.params)
    ups = [a["up"]["kernel"] for a in params["module"].values()]
    assert any(np.any(u) for u in ups)  # the adapters left their zero init
    protos = np.asarray(run.learner_state.prototypes)
    assert protos.shape == (10, 2 * run.model.width) and np.all(np.any(protos, axis=1))


def test_aper_stopped_inside_its_epochs_resumes_bitwise(finished, tmp_path):
    run, results, _ = finished
    # Task 0: 4 scoring batches, 4 MIST steps, then APER's 2 epochs of 3 batches: boundary 10
    # is epoch 0, batch 2.
    assert_resumes_bitwise(_config, run, results, tmp_path, 10, r"learner phase, epoch 0, batch 2")


@pytest.mark.parametrize("module", ["adapter", "vpt_deep", "finetune"])
def test_aper_without_mist_keeps_the_backbone_and_module_after_task_0(tmp_path, module):
    cfg = _config(**{"mist.enabled": False, "learner.aper.module": module})
    run = train.Run(cfg, tmp_path / "frozen", progress=False)
    backbone0 = jax.device_get(run.params["backbone"])
    init = jax.device_get(run.learner_state.params["module"])
    run._task(0)
    module0 = jax.device_get(run.learner_state.params)
    assert not all(jax.tree.leaves(jax.tree.map(np.array_equal, init, module0["module"])))
    run._task(1)
    assert np.all(np.isfinite(run.record["acc_matrix"][-1]))
    for before, after in ((backbone0, run.params["backbone"]),
                          (module0, run.learner_state.params)):
        same = jax.tree.map(np.array_equal, before, jax.device_get(after))
        assert all(jax.tree.leaves(same))


def test_adapter_dropout_is_inverted_dropout_of_the_bottleneck_in_training_only():
    """The reference Adapter's F.dropout(p=0.1) after the ReLU: with an identity
    up-projection each output is either 0 or the activation / (1 - p); about p of them are
    dropped; no key (test time) leaves the branch as it is."""
    rng = np.random.default_rng(0)
    d, p = 64, 0.1
    x = jnp.asarray(rng.normal(size=(32, 10, d)), jnp.float32)
    down = {"kernel": jnp.asarray(rng.normal(size=(d, d)) / 8, jnp.float32),
            "bias": jnp.zeros(d)}
    adapter = {"down": down, "up": {"kernel": jnp.eye(d), "bias": jnp.zeros(d)}}
    h = np.maximum(np.asarray(x) @ np.asarray(down["kernel"]), 0)  # ReLU(down(x)), by hand
    np.testing.assert_allclose(np.asarray(extensions.bottleneck(x, adapter)), h, rtol=1e-5,
                               atol=1e-6)
    out = np.asarray(extensions.bottleneck(x, adapter, (p, jax.random.key(3))))
    active = h > 1e-3
    kept = np.isclose(out, h / (1 - p), rtol=1e-5, atol=1e-6)
    assert np.all(kept | (out == 0))
    dropped = np.mean(out[active] == 0)
    assert abs(dropped - p) < 0.01  # ~10,000 active units: 3 sd is 0.009
    other = np.asarray(extensions.bottleneck(x, adapter, (p, jax.random.key(4))))
    assert not np.array_equal(out, other)


def test_aper_and_ease_draw_dropout_only_with_a_key():
    from mist_jax.learners.ease import Ease

    learner, model, images, backbone = _tiny("adapter", adapter_scale=3.0)  # a visible branch
    assert learner.adapter_dropout == 0.1 and learner.needs_key
    assert not _tiny("ssf")[0].needs_key and not _tiny(adapter_dropout=0.0)[0].needs_key
    state = learner.init(jax.random.key(2), model.width)
    module = jax.tree.map(lambda a: a + 0.3, state.params["module"])  # a non-zero branch
    params = dict(state.params, module=module)
    labels, bounds = jnp.asarray([0, 1, 0]), jnp.asarray([0, 2])
    feats = [np.asarray(learner.adapted(module, backbone, images, key)) for key in
             (None, jax.random.key(5), jax.random.key(5), jax.random.key(6))]
    assert np.array_equal(feats[1], feats[2])  # the same key, the same draw
    assert not np.array_equal(feats[0], feats[1]) and not np.array_equal(feats[1], feats[3])
    np.testing.assert_array_equal(feats[0], np.asarray(learner.embed(state.replace(
        params=params), backbone, images))[:, model.width:])  # test time: no dropout
    grad = lambda key: jax.grad(learner.loss)(params, state, backbone, images, labels, bounds,
                                              key=key)["module"][0]["down"]["kernel"]
    assert not np.array_equal(np.asarray(grad(None)), np.asarray(grad(jax.random.key(5))))
    ease = Ease(model=model, preprocess=lambda x: x, num_classes=6, num_tasks=3, adapter_dim=4)
    assert ease.adapter_dropout == 0.1 and ease.needs_key
    with pytest.raises(ValueError, match="adapter_dropout must be in"):
        Ease(model=model, preprocess=lambda x: x, num_classes=6, num_tasks=3, adapter_dropout=1.0)
