"""selector="fish" (mist_jax/mist/fish.py): the prototype classifier and its CE-Fisher score against
NumPy / hand-written references, and the selector inside a MIST adaptation."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default as default_config  # noqa: E402
from mist_jax.mist import fish, masks  # noqa: E402
from mist_jax.mist import tuner as tuner_module
from mist_jax import mist
from mist_jax.models import tiny_vit  # noqa: E402

SIZE, CLASSES = 16, (3, 5, 9)


@pytest.fixture(scope="module")
def setup():
    model = tiny_vit(image_size=SIZE, patch_size=8)
    x = jnp.zeros((1, SIZE, SIZE, 3))
    backbone = model.init(jax.random.key(0), x)["params"]
    rng = np.random.default_rng(0)
    batches = []
    for b in range(3):
        labels = np.array([CLASSES[(b + i) % 3] for i in range(6)], np.int32)
        batches.append((rng.uniform(0, 1, (6, SIZE, SIZE, 3)).astype(np.float32), labels,
                        jax.random.key(b)))
    feats = [np.asarray(model.apply({"params": backbone}, x), np.float64) for x, *_ in batches]
    return model, backbone, batches, feats


def _numpy_prototypes(batches, feats):
    f = np.concatenate(feats)
    y = np.concatenate([b[1] for b in batches])
    protos = np.stack([f[y == c].mean(0) for c in CLASSES])
    return protos / np.linalg.norm(protos, axis=1, keepdims=True)


def test_prototypes_are_the_normalised_class_means(setup):
    model, backbone, batches, feats = setup
    classes, protos = fish.FishScorer(model, lambda v: v).prototypes(backbone, batches)
    np.testing.assert_array_equal(classes, CLASSES)
    np.testing.assert_allclose(protos, _numpy_prototypes(batches, feats), rtol=1e-5, atol=1e-6)


def test_loss_is_cross_entropy_of_cosine_logits(setup):
    model, backbone, batches, feats = setup
    protos = _numpy_prototypes(batches, feats)
    x, y, key = batches[0]
    f = feats[0] / np.linalg.norm(feats[0], axis=1, keepdims=True)
    logits = f @ protos.T / 0.1
    target = np.searchsorted(CLASSES, y)
    m = logits.max(1, keepdims=True)
    log_p = logits - m - np.log(np.exp(logits - m).sum(1, keepdims=True))
    want = -np.mean(log_p[np.arange(len(y)), target])
    loss_fn = fish.make_loss_fn(model, lambda v: v, temperature=0.1)
    got = loss_fn({"backbone": backbone, "head": {}}, (x, y, key, np.array(CLASSES, np.int32),
                                                       protos.astype(np.float32)))
    np.testing.assert_allclose(float(got), want, rtol=1e-5)


def test_fish_selector_scores_the_prototype_cross_entropy_in_an_adaptation(setup, monkeypatch):
    model, backbone, batches, feats = setup
    cfg = default_config.get_config("smoke").mist
    with cfg.unlocked():
        cfg.selector, cfg.epochs, cfg.temperature = "fish", 2, 0.07
    head = mist.init_head(jax.random.key(1), model.width, cfg.proj_dim)
    params = {"backbone": backbone, "head": head}
    scorer = fish.FishScorer(model, lambda v: v, cfg.temperature)
    tuner = mist.Tuner(mist.make_loss_fn(model, lambda v: v), cfg, params, fish=scorer)
    with pytest.raises(ValueError, match="fish"):
        mist.Tuner(tuner.loss_fn, cfg, params)
    state = masks.init_mist_state(params)
    seen, score = [], mist.score

    def spy(*args, **kw):
        state = score(*args, **kw)
        seen.append(jax.device_get(state.carry))
        return state

    monkeypatch.setattr(tuner_module, "score", spy)
    _, _, log = tuner.adapt(params, state, lambda e, start: batches[start:], jax.random.key(2))
    # Independent transcription: sum over batches of the squared gradient of the CE of
    # cos(f(x), prototypes) / T, prototypes from NumPy.
    protos = jnp.asarray(_numpy_prototypes(batches, feats), jnp.float32)

    def ce(bb, x, y):
        f = model.apply({"params": bb}, x)
        f = f / jnp.linalg.norm(f, axis=1, keepdims=True)
        logits = f @ protos.T / cfg.temperature
        target = jnp.searchsorted(jnp.array(CLASSES), y)
        return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(len(y)), target])

    want = None
    for x, y, _ in batches:
        g = jax.tree.map(jnp.square, jax.grad(ce)(backbone, x, y))
        want = g if want is None else jax.tree.map(jnp.add, want, g)
    got = seen[0]
    for a, b in zip(jax.tree.leaves(got["backbone"]), jax.tree.leaves(want)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-4, atol=1e-12)
    assert all(float(jnp.abs(s).max()) == 0.0 for s in jax.tree.leaves(got["head"]))
    # Same per-unit budget as MI-Fisher: 10% of each scored kernel selected.
    kernel = "backbone/encoderblock_0/mlp/fc1/kernel"
    assert log["coverage"][kernel] == pytest.approx(100 * cfg.select_rate, abs=1.0)
    assert np.isfinite(log["mi_loss_per_epoch"]).all()
