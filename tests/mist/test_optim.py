"""Sparse-tuning optimizer: drop statistics, masks, torch SGD rule, strict sparsity, sharding."""

import os
import subprocess
import sys
import textwrap

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mist_jax.mist import drop, inner, optim
from support.variants import VARIANTS


def small_tree(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "backbone": {
            "w": jnp.asarray(rng.normal(size=(6, 5)), jnp.float32),
            "bias": jnp.asarray(rng.normal(size=(5,)), jnp.float32),
        },
        "head": {"kernel": jnp.asarray(rng.normal(size=(5, 3)), jnp.float32)},
    }


def started(tx, params, mask=None, count=None, frozen=None, seed=0):
    """``tx``'s state for one task: ``init``, then ``optim.start_task`` with its selection."""
    return optim.start_task(tx.init(params), params, mask, count, frozen, seed)


def keep_mask(key, shape, keep_prob):
    """The drop's keep mask of one leaf key: its two threefry words, then the hash."""
    return drop.hashed_keep(jax.random.bits(key, (2,), jnp.uint32), shape, keep_prob)


def live_masks(tree, mask, count, frozen, steps, drop_rate, seed):
    """Live masks of `steps` consecutive steps, read off the standalone transform's output on
    all-ones gradients (non-zero exactly where an element is live)."""
    tx = optim.sparse_tuning(drop_rate=drop_rate)
    state = started(tx, tree, mask, count, frozen, seed)
    ones = jax.tree.map(jnp.ones_like, tree)
    update = jax.jit(tx.update)
    out = []
    for _ in range(steps):
        u, state = update(ones, state)
        out.append(jax.tree.map(lambda x: np.asarray(x) != 0, u))
    return out


@pytest.mark.parametrize('drop_rate, select', [(0.9, None), (0.5, None), (0.9, 0.3)])
def test_observed_drop_rate_within_3_sigma(drop_rate, select):
    # select None: every element is a candidate; 0.3: a fixed 30% of each leaf.
    tree = {"a": jnp.zeros((100, 100)), "b": jnp.zeros((100, 100))}
    mask = None
    if select is not None:
        rng = np.random.default_rng(0)
        mask = {k: rng.random((100, 100)) < select for k in tree}
    steps = 40
    lives = live_masks(tree, mask, None, None, steps, drop_rate, seed=7)
    cand = {k: np.ones((100, 100), bool) if mask is None else mask[k] for k in tree}
    n = steps * sum(c.sum() for c in cand.values())
    kept = sum(l[k].sum() for l in lives for k in tree) / n
    p = 1 - drop_rate
    assert abs(kept - p) < 3 * np.sqrt(p * (1 - p) / n)
    for l in lives:  # never outside the candidates
        for k in tree:
            assert not np.any(l[k] & ~cand[k])
    # Fresh per step and per leaf: the overlap of two draws is p^2, not p.
    m = cand["a"] & cand["b"]
    both_steps = np.mean(lives[0]["a"][m] & lives[1]["a"][m])
    both_leaves = np.mean(lives[0]["a"][m] & lives[0]["b"][m])
    for x in (both_steps, both_leaves):
        assert abs(x - p * p) < 4 * np.sqrt(p * p * (1 - p * p) / m.sum())


@pytest.mark.parametrize('p', [0.1, 0.5, 0.97])
def test_keep_mask_statistics(p):
    n_keys, n = 50, 4096
    draws = np.stack([
        np.asarray(keep_mask(jax.random.PRNGKey(k), (n,), p)) for k in range(n_keys)
    ])
    total = draws.size
    assert abs(draws.mean() - p) < 3 * np.sqrt(p * (1 - p) / total)
    # Neighbouring elements and neighbouring keys are independent: P(both) = p^2.
    for both in (draws[:, 1:] & draws[:, :-1], draws[1:] & draws[:-1]):
        assert abs(both.mean() - p * p) < 4 * np.sqrt(p * p * (1 - p * p) / both.size)
    # Counts in blocks of 64 have the binomial variance 64 p (1 - p) (no clumping).
    blocks = draws.reshape(-1, 64).sum(1)
    assert abs(blocks.var() / (64 * p * (1 - p)) - 1) < 0.15


def test_leaf_words_are_the_per_leaf_draws():
    for key in (jax.random.PRNGKey(7), jax.random.key(7)):
        words = drop.leaf_words(key, 5)
        for i in range(5):
            np.testing.assert_array_equal(
                words[i], jax.random.bits(jax.random.fold_in(key, i), (2,), jnp.uint32))


def test_step_drops_by_the_documented_keys():
    # Leaf i at step t keeps keep_mask(fold_in(fold_in(key, t), i), shape, 1 - drop_rate).
    params = {"a": jnp.zeros((6, 5)), "b": jnp.zeros((7,))}
    ones = jax.tree.map(jnp.ones_like, params)
    key = jax.random.PRNGKey(5)
    tx = optim.sparse_tuning(drop_rate=0.5, overlap_decay=1.0)
    state = started(tx, params, seed=key)
    for t in range(2):
        out, state = tx.update(ones, state)
        for i, leaf in enumerate(("a", "b")):
            want = keep_mask(jax.random.fold_in(jax.random.fold_in(key, t), i),
                                  params[leaf].shape, 0.5)
            np.testing.assert_array_equal(np.asarray(out[leaf]) != 0, want)


def test_keep_mask_uses_row_major_flat_index():
    key = jax.random.PRNGKey(3)
    np.testing.assert_array_equal(
        keep_mask(key, (6, 7, 5), 0.3), keep_mask(key, (210,), 0.3).reshape(6, 7, 5)
    )
    assert np.all(keep_mask(key, (9,), 1.0))
    assert not np.any(keep_mask(key, (9,), 0.0))


@pytest.mark.parametrize("variant", VARIANTS)
def test_mask_overlap_decay_and_frozen(variant):
    tree = small_tree()
    rng = np.random.default_rng(1)
    mask = {"backbone": {"w": rng.random((6, 5)) < 0.5, "bias": None}, "head": None}
    count = {"backbone": {"w": rng.integers(0, 4, (6, 5)).astype(np.int32), "bias": None}, "head": None}
    frozen = {"backbone": {"w": rng.random((6, 5)) < 0.2, "bias": np.array([1, 0, 0, 0, 1], bool)}, "head": None}
    tx = optim.sparse_tuning(drop_rate=0.0)
    grads = small_tree(2)
    out, _ = variant(tx.update)(grads, started(tx, tree, mask, count, frozen))
    g = np.asarray(grads["backbone"]["w"])
    w = mask["backbone"]["w"] & ~frozen["backbone"]["w"]
    np.testing.assert_allclose(out["backbone"]["w"], np.where(w, g * 0.9 ** count["backbone"]["w"], 0), rtol=1e-6)
    assert np.all(np.asarray(out["backbone"]["w"])[frozen["backbone"]["w"]] == 0)
    gb = np.asarray(grads["backbone"]["bias"])
    np.testing.assert_array_equal(out["backbone"]["bias"], np.where(frozen["backbone"]["bias"], 0, gb))
    np.testing.assert_array_equal(out["head"]["kernel"], grads["head"]["kernel"])


@pytest.mark.parametrize('decay', [0.9, 0.5, 0.0, 1.0])
def test_overlap_factor_and_count_clipping(decay):
    tree = {"w": jnp.zeros(5)}
    count = {"w": np.array([0, 1, 3, 254, 300], np.int32)}  # counts above 254 clip to 254
    tx = optim.sparse_tuning(drop_rate=0.0, overlap_decay=decay)
    out, _ = tx.update({"w": jnp.full(5, 2.0)}, started(tx, tree, count=count))
    expected = 2.0 * np.float64(decay) ** np.minimum(count["w"], 254)
    np.testing.assert_allclose(out["w"], expected, rtol=2e-6, atol=1e-30)


def test_bfloat16_gradients_keep_dtype():
    tree = {"w": jnp.zeros((4, 4), jnp.bfloat16)}
    tx = optim.sparse_tuning(drop_rate=0.0)
    out, _ = tx.update({"w": jnp.ones((4, 4), jnp.bfloat16)},
                       started(tx, tree, count=2 * jnp.ones((4, 4), jnp.int32)))
    assert out["w"].dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(out["w"], np.float32), 0.81, rtol=1e-2)


@pytest.mark.parametrize('rate', [-0.1, 1.1])
def test_bad_rates(rate):
    with pytest.raises(ValueError, match="drop_rate"):
        optim.sparse_tuning(drop_rate=rate)
    with pytest.raises(ValueError, match="overlap_decay"):
        optim.mist_optimizer(overlap_decay=rate)


# --------------------------------------------------------------------------- SGD rule
def torch_sgd_reference(params, targets, lives, scales, steps, lr, head_lr, mu=0.9, wd=5e-4):
    """Hand-written torch.optim.SGD rule on loss 0.5 * ||p - target||^2 (so grad = p - target),
    after MIST's gradient masking: d_p = grad * live * scale; d_p += wd * p;
    buf = d_p at the first step else mu * buf + d_p; p -= lr * buf."""
    p = {k: np.asarray(v, np.float64) for k, v in params.items()}
    buf = {}
    for t in range(steps):
        for k in p:
            g = p[k] - targets[k]
            d_p = g * lives[t][k] * scales[k] + wd * p[k]
            buf[k] = d_p if t == 0 else mu * buf[k] + d_p
            p[k] = p[k] - (head_lr if k.startswith("head/") else lr) * buf[k]
    return p


def flat(tree):
    leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {jax.tree_util.keystr(k, simple=True, separator="/"): np.asarray(v) for k, v in leaves}


def run_steps(tx, params, targets, steps, **task):
    def loss(p):
        return sum(0.5 * jnp.sum((a - b) ** 2) for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(targets)))

    @jax.jit
    def step(p, s):
        u, s = tx.update(jax.grad(loss)(p), s, p)
        return optax.apply_updates(p, u), s

    state = started(tx, params, **task)
    history = [params]
    for _ in range(steps):
        params, state = step(params, state)
        history.append(params)
    return history


@pytest.mark.parametrize('drop_rate, lr, head_lr, select', [(0.0, 1e-4, 1e-2, 0.4), (0.6, 0.05, 0.2, 0.3), (0.6, 0.05, 0.2, 0.9)])
def test_reference_mode_matches_torch_sgd(drop_rate, lr, head_lr, select):
    params, targets = small_tree(0), small_tree(1)
    rng = np.random.default_rng(3)
    mask = {"backbone": {"w": rng.random((6, 5)) < select, "bias": None}, "head": None}
    count = {"backbone": {"w": rng.integers(0, 3, (6, 5)).astype(np.int32), "bias": None}, "head": None}
    frozen = {"backbone": {"w": rng.random((6, 5)) < 0.1, "bias": None}, "head": None}
    steps = 5
    tx = optim.mist_optimizer(
        drop_rate=drop_rate,
        inner=inner.inner_optimizer(learning_rate=lr, head_learning_rate=head_lr))
    history = run_steps(tx, params, targets, steps, mask=mask, count=count, frozen=frozen,
                        seed=11)
    lives = [flat(l) for l in live_masks(params, mask, count, frozen, steps, drop_rate, seed=11)]
    scales = {
        "backbone/w": np.where(mask["backbone"]["w"] & ~frozen["backbone"]["w"], 0.9 ** count["backbone"]["w"], 0.0),
        "backbone/bias": 1.0,
        "head/kernel": 1.0,
    }
    expected = torch_sgd_reference(flat(params), flat(targets), lives, scales, steps, lr, head_lr)
    got = flat(history[-1])
    for k in expected:
        np.testing.assert_allclose(got[k], expected[k], rtol=1e-5, atol=1e-7, err_msg=k)
    # Reference mode: weight decay and momentum move elements that are not live.
    moved = flat(history[-1])["backbone/w"] != flat(history[-2])["backbone/w"]
    assert np.any(moved & ~lives[-1]["backbone/w"])


@pytest.mark.parametrize('select', [0.2, 0.8])
def test_strict_mode_changes_only_live_elements(select):
    params, targets = small_tree(0), small_tree(1)
    mask = {"backbone": {"w": np.random.default_rng(5).random((6, 5)) < select, "bias": None}, "head": None}
    steps = 4
    tx = optim.mist_optimizer(sparsity="strict", drop_rate=0.5,
                              inner=inner.inner_optimizer(learning_rate=0.1))
    history = [flat(h) for h in run_steps(tx, params, targets, steps, mask=mask, seed=2)]
    lives = [flat(l) for l in live_masks(params, mask, None, None, steps, 0.5, seed=2)]
    for t in range(steps):
        for k in lives[t]:
            delta = history[t + 1][k] - history[t][k]
            np.testing.assert_array_equal(delta[~lives[t][k]], 0.0, err_msg=f"step {t} {k}")
            assert np.all(delta[lives[t][k]] != 0.0), f"step {t} {k}"
    frac = optim.updated_fraction(
        jax.tree.unflatten(jax.tree.structure(params), [history[-2][k] for k in sorted(history[-2])]),
        jax.tree.unflatten(jax.tree.structure(params), [history[-1][k] for k in sorted(history[-1])]),
    )
    n_live = sum(l.sum() for l in lives[-1].values())
    assert float(frac) == pytest.approx(n_live / (30 + 5 + 15), abs=0.5 * 10 ** -6)


@pytest.mark.parametrize("variant", VARIANTS)
def test_strict_first_update_by_hand(variant):
    # Step 1 of torch SGD on live elements only: u = -lr * (g + wd * p) * live, with lr
    # 1e-2 under head/ and 1e-4 elsewhere (momentum buffer = first gradient).
    params, grads = small_tree(0), small_tree(1)
    tx = optim.mist_optimizer(sparsity="strict")
    u, state = variant(tx.update)(grads, started(tx, params, seed=4), params)
    live = live_masks(params, None, None, None, 1, 0.9, seed=4)[0]
    want = jax.tree_util.tree_map_with_path(
        lambda path, g, p, l: -(1e-2 if "head" in jax.tree_util.keystr(path) else 1e-4)
        * (np.asarray(g) + 5e-4 * np.asarray(p)) * l, grads, params, live)
    chex.assert_trees_all_close(u, want, rtol=1e-6, atol=1e-12)
    assert int(state.sparse.step) == 1


def test_all_backbone_params_with_first_arguments_only():
    params = {"w": jnp.ones((3, 2))}
    mask = {"w": jnp.asarray([[1, 0], [1, 1], [0, 0]], bool)}
    tx = optim.mist_optimizer(drop_rate=0.0)
    u, _ = jax.jit(tx.update)({"w": 2 * jnp.ones((3, 2))}, started(tx, params, mask), params)
    # lr 1e-4 everywhere: -(1e-4) * (2 * mask + 5e-4 * 1).
    np.testing.assert_allclose(u["w"], -1e-4 * (2.0 * np.asarray(mask["w"]) + 5e-4), rtol=1e-6)


def test_bad_sparsity():
    with pytest.raises(ValueError, match="sparsity"):
        optim.mist_optimizer(sparsity="exact")


def test_hand_computed():
    before = {"w": jnp.zeros((2, 2)), "bias": jnp.zeros(4), "head": {"k": jnp.zeros(3)}}
    after = {"w": jnp.asarray([[0, 1e-7], [0, 0]]), "bias": jnp.ones(4), "head": {"k": jnp.ones(3)}}
    assert float(optim.updated_fraction(before, after)) == pytest.approx(8 / 11, abs=0.5 * 10 ** -7)
    frac = optim.updated_fraction(before, after, exempt=(r"(^|/)bias$", r"(^|/)head/"))
    assert frac.dtype == jnp.float32
    assert float(frac) == pytest.approx(1 / 4, abs=0.5 * 10 ** -7)


# --------------------------------------------------------------------------- device count
_SHARDED = textwrap.dedent(
    """
    import os, sys
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from mist_jax.mist import optim
    assert jax.device_count() == 2, jax.devices()
    params = {"a": jnp.zeros((64, 32)), "b": jnp.zeros((16,))}
    mesh = Mesh(np.array(jax.devices()), ("x",))
    shard = {"a": NamedSharding(mesh, P("x", None)), "b": NamedSharding(mesh, P("x"))}
    params = jax.device_put(params, shard)
    mask = {"a": np.random.default_rng(0).random((64, 32)) < 0.2, "b": None}
    tx = optim.sparse_tuning(drop_rate=0.5)
    state = optim.start_task(tx.init(params), params, mask, None, None, 5)
    ones = jax.tree.map(jnp.ones_like, params)
    update = jax.jit(tx.update)
    for _ in range(3):
        u, state = update(ones, state)
    assert len(u["a"].sharding.device_set) == 2
    np.savez(sys.argv[1], a=np.asarray(u["a"]), b=np.asarray(u["b"]))
    """
)


def test_same_bits_on_two_devices(tmp_path):
    out = tmp_path / "two.npz"
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2", JAX_PLATFORMS="cpu")
    subprocess.run([sys.executable, "-c", _SHARDED, str(out)], check=True, env=env, timeout=120)
    params = {"a": jnp.zeros((64, 32)), "b": jnp.zeros((16,))}
    mask = {"a": np.random.default_rng(0).random((64, 32)) < 0.2, "b": None}
    lives = live_masks(params, mask, None, None, 3, 0.5, seed=5)
    two = np.load(out)
    np.testing.assert_array_equal(two["a"] != 0, lives[-1]["a"])
    np.testing.assert_array_equal(two["b"] != 0, lives[-1]["b"])


if __name__ == "__main__":
    pytest.main([__file__])


# --------------------------------------------------------------------------- one transform per run
def test_start_task_sets_the_codes_key_and_step_by_hand():
    """start_task (what mist.Tuner does per task) puts the task's selection into any state:
    code = 1 + min(count, 254) where selected and not frozen, else 0; the key of the task's
    seed; step 0; the inner optimizer's state untouched."""
    params = {"w": jnp.zeros((2, 3))}
    mask = {"w": np.array([[1, 1, 0], [1, 1, 1]], bool)}
    count = {"w": np.array([[0, 3, 5], [300, 1, 2]], np.int32)}
    frozen = {"w": np.array([[0, 0, 0], [0, 1, 0]], bool)}
    tx = optim.mist_optimizer(drop_rate=0.5)
    state = tx.init(params)
    new = optim.start_task(state, params, mask, count, frozen, 7)
    sparse = new[0]
    np.testing.assert_array_equal(sparse.code["w"], [[1, 4, 0], [255, 0, 3]])
    np.testing.assert_array_equal(sparse.key, jax.random.key_data(jax.random.key(7)))
    assert int(sparse.step) == 0
    chex.assert_trees_all_equal(new[1], state[1])


def test_inner_optimizer_by_name_gets_the_masked_gradients():
    """mist_optimizer(inner=adamw) == optax.adamw (backbone lr; head lr on head/) applied to the
    gradients the sparse transform leaves (hand-masked here with the same live masks)."""
    params = small_tree()
    rng = np.random.default_rng(4)
    mask = jax.tree.map(lambda x: jnp.asarray(rng.random(x.shape) < 0.4), params)
    steps, lr, head_lr, wd = 3, 1e-2, 1e-1, 5e-4
    adamw = inner.inner_optimizer("adamw", learning_rate=lr, head_learning_rate=head_lr,
                                  weight_decay=wd)
    tx = optim.mist_optimizer(drop_rate=0.5, inner=adamw)
    lives = live_masks(params, mask, None, None, steps, 0.5, seed=6)
    ref = {"backbone": optax.adamw(lr, weight_decay=wd), "head": optax.adamw(head_lr, weight_decay=wd)}
    p, state = params, started(tx, params, mask, seed=6)
    q, ref_state = params, {k: ref[k].init(params[k]) for k in ref}
    for t in range(steps):
        grads = small_tree(10 + t)
        u, state = tx.update(grads, state, p)
        p = optax.apply_updates(p, u)
        g = jax.tree.map(lambda x, l: jnp.where(l, x, 0.0), grads, lives[t])
        new = {}
        for k in ref:
            uk, ref_state[k] = ref[k].update(g[k], ref_state[k], q[k])
            new[k] = optax.apply_updates(q[k], uk)
        q = new
    chex.assert_trees_all_close(p, q, rtol=1e-6, atol=1e-7)


def test_unknown_inner_optimizer_is_an_error():
    with pytest.raises(ValueError, match="not an optax optimizer"):
        inner.inner_optimizer("adamww")
    with pytest.raises(ValueError, match="not an optax optimizer"):
        inner.inner_optimizer("apply_updates")  # an optax function, not an optimizer


def test_an_option_the_inner_optimizer_does_not_take_is_refused_by_name():
    with pytest.raises(ValueError, match="'adamw' takes no 'momentum'"):
        inner.inner_optimizer("adamw", learning_rate=1e-3, momentum=0.9)
    with pytest.raises(ValueError, match="'sgd' takes no 'b1'"):
        inner.inner_optimizer("sgd", b1=0.9)
    cfg = type("MistConfig", (), dict(optimizer="adamw", learning_rate=1e-3, momentum=0.9,
                                      weight_decay=1e-4, head_learning_rate=1e-2))
    with pytest.raises(ValueError, match="mist.momentum=0"):
        inner.from_config(cfg)
