"""Selection masks, coverage and task bookkeeping against numpy.quantile and hand-made trees."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mist_jax.mist import mask_stats, masks, quantiles
from mist_jax.infra import trees
from support.variants import VARIANTS


SHAPES = {
    "backbone": {
        "cls_token": (1, 1, 8),
        "patch_embed": {"kernel": (2, 2, 3, 8), "bias": (8,)},
        "encoderblock_0": {
            "norm1": {"scale": (8,), "bias": (8,)},
            "attn": {"query": {"kernel": (8, 2, 4), "bias": (2, 4)}},
            "ls1": {"scale": (8,)},
            "mlp": {"fc1": {"kernel": (8, 16), "bias": (16,)}},
        },
        "encoder_norm": {"scale": (8,), "bias": (8,)},
    },
    "head": {"kernel": (8, 4), "bias": (4,)},
}
# Hand-listed expectation for DEFAULT_EXEMPT: biases, LayerNorm scales, the head.
EXEMPT = {
    "backbone/cls_token": False,
    "backbone/patch_embed/kernel": False,
    "backbone/patch_embed/bias": True,
    "backbone/encoderblock_0/norm1/scale": True,
    "backbone/encoderblock_0/norm1/bias": True,
    "backbone/encoderblock_0/attn/query/kernel": False,
    "backbone/encoderblock_0/attn/query/bias": True,
    "backbone/encoderblock_0/ls1/scale": False,
    "backbone/encoderblock_0/mlp/fc1/kernel": False,
    "backbone/encoderblock_0/mlp/fc1/bias": True,
    "backbone/encoder_norm/scale": True,
    "backbone/encoder_norm/bias": True,
    "head/kernel": True,
    "head/bias": True,
}


def is_shape(x):
    return isinstance(x, tuple)


def random_tree(seed, ties=False):
    rng = np.random.default_rng(seed)

    def leaf(shape):
        if ties:  # few distinct values: many ties at the threshold
            return jnp.asarray(rng.integers(0, 4, size=shape).astype(np.float32))
        return jnp.asarray(rng.random(shape).astype(np.float32))

    return jax.tree.map(leaf, SHAPES, is_leaf=is_shape)


def flat(tree):
    leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
    return {trees.path_str(p): np.asarray(v) for p, v in leaves}


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize('n, q', [(1, 0.9), (2, 0.5), (10, 0.9), (37, 0.95), (101, 0.9995), (1000, 0.9), (999, 0.0), (64, 1.0)])
def test_matches_numpy(variant, n, q):
    rng = np.random.default_rng(n)
    for x in (rng.normal(size=n).astype(np.float32), rng.integers(0, 3, size=n).astype(np.float32)):
        got = variant(functools.partial(quantiles.quantile_threshold, q=q))(jnp.asarray(x))
        np.testing.assert_allclose(got, np.quantile(x, q), rtol=1e-6, atol=1e-7)
        np.testing.assert_array_equal(x >= got, x >= np.quantile(x, q))


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize('rate, ties', [(0.1, False), (0.05, False), (0.1, True), (0.5, True), (1.0, False)])
def test_against_numpy_quantile(variant, rate, ties):
    scores = random_tree(int(rate * 100) + ties, ties)
    got = flat(variant(functools.partial(masks.select_top, select_rate=rate))(scores))
    for path, s in flat(scores).items():
        assert got[path].dtype == bool
        if EXEMPT[path]:
            assert got[path].all(), path
        else:
            np.testing.assert_array_equal(got[path], s >= np.quantile(s, 1 - rate), err_msg=path)


def test_ties_are_all_selected():
    # 10 elements, values 0..4 twice; quantile(0.9) with linear interpolation:
    # virtual index 0.9 * 9 = 8.1 -> sorted[8] = 4, sorted[9] = 4 -> threshold 4 exactly,
    # both 4s selected (2 of 10).
    s = {"w": jnp.asarray([0, 1, 2, 3, 4, 0, 1, 2, 3, 4], jnp.float32) * 0.1 + 0.3}
    got = masks.select_top(s, 0.1, exempt=())["w"]
    np.testing.assert_array_equal(got, [0, 0, 0, 0, 1, 0, 0, 0, 0, 1])


def test_exempt_override():
    scores = random_tree(0)
    got = flat(masks.select_top(scores, 0.1, exempt=(r"cls_token$",)))
    assert got["backbone/cls_token"].all()
    assert not got["head/kernel"].all()  # no longer exempt


@pytest.mark.parametrize('rate', [0.0, -0.1, 1.5])
def test_bad_rate(rate):
    with pytest.raises(ValueError, match="select_rate"):
        masks.select_top(random_tree(0), rate)


def test_default_exempt():
    tree = jax.tree.map(jnp.zeros, SHAPES, is_leaf=is_shape)
    assert flat(trees.exempt_tree(tree, masks.DEFAULT_EXEMPT)) == {k: np.asarray(v) for k, v in EXEMPT.items()}
    assert flat(trees.tree_paths(tree))["head/bias"] == "head/bias"


def test_string_patterns_rejected():
    with pytest.raises(ValueError, match="wrap it in a tuple"):
        trees.exempt_tree({"a": 1}, r"bias$")


def test_expand_prefix():
    params = {"backbone": {"w": jnp.zeros((2, 3))}, "head": {"k": jnp.zeros((3,))}}
    got = trees.expand_prefix({"backbone": {"w": jnp.ones((2, 3))}, "head": None}, params, 5)
    np.testing.assert_array_equal(got["backbone"]["w"], np.ones((2, 3)))
    assert got["head"]["k"].shape == ()  # scalar, broadcastable, not materialised
    assert int(got["head"]["k"]) == 5
    assert int(trees.expand_prefix(None, params, 0)["backbone"]["w"]) == 0
    with pytest.raises(ValueError, match="not a prefix"):
        trees.expand_prefix({"backbone": None}, params, 0)
    with pytest.raises(ValueError, match="does not broadcast.*backbone/w"):
        trees.expand_prefix({"backbone": jnp.ones(4), "head": None}, params, 0)


def test_same_budget_for_every_selector():
    params = random_tree(1)
    scores = random_tree(2)
    counts = {}
    for kind in masks.SELECTORS:
        m = masks.select(kind, 0.1, params=params, scores=scores, seed=3)
        counts[kind] = {k: int(v.sum()) for k, v in flat(m).items()}
    for kind in masks.SELECTORS:
        assert counts[kind] == counts["fisher"], kind


def test_magnitude_and_random():
    params = jax.tree.map(lambda x: x - 0.5, random_tree(4))
    got = flat(masks.select("magnitude", 0.2, params=params))
    w = flat(params)["backbone/encoderblock_0/mlp/fc1/kernel"]
    np.testing.assert_array_equal(
        got["backbone/encoderblock_0/mlp/fc1/kernel"], np.abs(w) >= np.quantile(np.abs(w), 0.8)
    )
    r1 = flat(masks.select("random", 0.2, params=params, seed=0))
    r2 = flat(masks.select("random", 0.2, params=params, seed=0))
    r3 = flat(masks.select("random", 0.2, scores=params, seed=1))
    k = "backbone/encoderblock_0/mlp/fc1/kernel"
    np.testing.assert_array_equal(r1[k], r2[k])
    assert not np.array_equal(r1[k], r3[k])


def test_errors():
    with pytest.raises(ValueError, match="unknown selector"):
        masks.select("l2", 0.1, params={})
    with pytest.raises(ValueError, match="fisher_scores"):
        masks.select("fisher", 0.1, params={})
    with pytest.raises(ValueError, match="needs params"):
        masks.select("magnitude", 0.1)
    with pytest.raises(ValueError, match="needs params"):
        masks.select("random", 0.1)


def test_counts_and_fraction():
    mask = {
        "backbone": {"w": jnp.asarray([[1, 0], [0, 0]], bool), "bias": jnp.ones(3, bool)},
        "head": {"kernel": jnp.ones((2, 2), bool)},
    }
    report = mask_stats.coverage(mask)
    assert report == {"backbone/bias": (3, 3), "backbone/w": (1, 4), "head/kernel": (4, 4)}
    assert mask_stats.overall_fraction(report) == pytest.approx(8 / 11, abs=0.5 * 10 ** -7)
    assert mask_stats.overall_fraction(report, masks.DEFAULT_EXEMPT) == pytest.approx(1 / 4, abs=0.5 * 10 ** -7)


@pytest.mark.parametrize("variant", VARIANTS)
def test_three_tasks(variant):
    params = random_tree(0)
    state = masks.init_mist_state(params)
    for leaf in jax.tree.leaves(state.count):
        assert leaf.dtype == jnp.int32
    update = variant(
        functools.partial(masks.update_after_task, freeze_rate=0.05)
    )
    exp_count = {k: np.zeros(v.shape, np.int32) for k, v in flat(params).items()}
    exp_frozen = {k: np.zeros(v.shape, bool) for k, v in flat(params).items()}
    for task in range(3):
        scores = random_tree(10 + task, ties=(task == 1))
        mask = masks.select_top(scores, 0.2)
        state = update(state, mask, scores)
        for k, s in flat(scores).items():
            if EXEMPT[k]:
                continue
            exp_count[k] += flat(mask)[k]
            exp_frozen[k] |= s >= np.quantile(s, 0.95)
        got_c, got_f = flat(state.count), flat(state.frozen)
        for k in exp_count:
            np.testing.assert_array_equal(got_c[k], exp_count[k], err_msg=f"{task} {k}")
            np.testing.assert_array_equal(got_f[k], exp_frozen[k], err_msg=f"{task} {k}")
            assert got_c[k].dtype == np.int32
            assert got_f[k].dtype == bool
    # Exempt leaves are never counted or frozen.
    assert int(flat(state.count)["head/kernel"].sum()) == 0
    assert not flat(state.frozen)["backbone/encoder_norm/scale"].any()
    # Something was counted more than once and something frozen across tasks.
    assert flat(state.count)["backbone/encoderblock_0/mlp/fc1/kernel"].max() > 1


def test_bad_freeze_rate():
    params = random_tree(0)
    state = masks.init_mist_state(params)
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match="freeze_rate"):
            masks.update_after_task(state, params, params, freeze_rate=bad)


def test_freeze_rate_zero_freezes_only_the_maximum():
    # The SimpleCIL file: frozen |= s >= torch.quantile(s, 1), i.e. s == max (ties too).
    params = random_tree(0)
    scores = random_tree(3, ties=True)
    state = masks.update_after_task(masks.init_mist_state(params), params, scores, 0.0)
    for k, s in flat(scores).items():
        expect = np.zeros(s.shape, bool) if EXEMPT[k] else s == s.max()
        np.testing.assert_array_equal(flat(state.frozen)[k], expect, err_msg=k)
    fc1 = flat(state.frozen)["backbone/encoderblock_0/mlp/fc1/kernel"]
    assert int(fc1.sum()) > 1  # ties at the maximum are all frozen


def qkv_scores():
    """One block whose q kernel holds the largest scores, k middling, v the smallest."""
    rng = np.random.default_rng(7)
    d, h, hd = 8, 2, 4
    scale = {"query": 100.0, "key": 1.0, "value": 0.01}
    attn = {n: {"kernel": jnp.asarray(scale[n] * rng.random((d, h, hd), np.float32)),
                "bias": jnp.asarray(rng.random((h, hd), np.float32))} for n in scale}
    attn["out"] = {"kernel": jnp.asarray(rng.random((h, hd, d), np.float32))}
    return {"backbone": {"encoderblock_0": {"attn": attn}}}


def test_official_units_fuse_qkv():
    # timm's attn.qkv.weight [3D, D]: one quantile over q, k and v together.
    scores = qkv_scores()
    attn = scores["backbone"]["encoderblock_0"]["attn"]
    fused = np.concatenate([np.ravel(attn[n]["kernel"]) for n in ("query", "key", "value")])
    t = np.quantile(fused, 0.9)
    mask = masks.select_top(scores, 0.1)
    m = mask["backbone"]["encoderblock_0"]["attn"]
    for n in ("query", "key", "value"):
        np.testing.assert_array_equal(m[n]["kernel"], np.asarray(attn[n]["kernel"]) >= t)
    # q dominates: it takes 30% of its own weights (the whole budget), k and v none.
    shares = {n: float(np.mean(m[n]["kernel"])) for n in ("query", "key", "value")}
    assert shares["query"] == pytest.approx(0.3, abs=1 / 64)
    assert shares["key"] == 0.0
    assert shares["value"] == 0.0
    # The out projection is its own unit: exactly its top 10%.
    out = np.asarray(attn["out"]["kernel"])
    np.testing.assert_array_equal(m["out"]["kernel"], out >= np.quantile(out, 0.9))
    # Per-leaf selection (the deviation) gives each of q, k, v its own 10%.
    leaf = masks.select_top(scores, 0.1, units="leaf")["backbone"]["encoderblock_0"]["attn"]
    for n in ("query", "key", "value"):
        assert float(np.mean(leaf[n]["kernel"])) == pytest.approx(0.1, abs=1 / 64)


def test_official_units_in_bookkeeping_and_coverage():
    scores = qkv_scores()
    state = masks.init_mist_state(scores)
    mask = masks.select_top(scores, 0.1)
    state = masks.update_after_task(state, mask, scores, freeze_rate=0.0)
    attn = scores["backbone"]["encoderblock_0"]["attn"]
    frozen = state.frozen["backbone"]["encoderblock_0"]["attn"]
    top = max(float(np.max(attn[n]["kernel"])) for n in ("query", "key", "value"))
    # Only the fused unit's single maximum (in q) is frozen; k and v keep none.
    assert int(np.sum(frozen["query"]["kernel"])) == 1
    assert float(np.asarray(attn["query"]["kernel"])[frozen["query"]["kernel"]][0]) == top
    assert not np.any(frozen["key"]["kernel"]) or np.any(frozen["value"]["kernel"])
    report = mask_stats.coverage(mask)
    prefix = "backbone/encoderblock_0/attn/"
    assert set(report) == {prefix + k for k in (
        "qkv/kernel", "out/kernel", "query/bias", "key/bias", "value/bias")}
    assert report["backbone/encoderblock_0/attn/qkv/kernel"][1] == 3 * 64


def test_task_summary_by_hand():
    b = lambda *x: jnp.array(x, bool)
    mask = {"backbone": {"cls_token": b(True, False), "encoderblock_0": {"attn": {
        "query": {"kernel": b([1, 1], [0, 1])}, "key": {"kernel": b([0, 0], [0, 1])},
        "query_bias_like": {"bias": b(True, True)}}}}}
    count = {"backbone": {"cls_token": jnp.array([0, 3]), "encoderblock_0": {"attn": {
        "query": {"kernel": jnp.array([[0, 2], [1, 2]])},
        "key": {"kernel": jnp.array([[0, 0], [0, 1]])},
        "query_bias_like": {"bias": jnp.array([5, 5])}}}}}
    scores = {"backbone": {"cls_token": jnp.array([4.0, 0.0]), "encoderblock_0": {"attn": {
        "query": {"kernel": jnp.full((2, 2), 3.0)}, "key": {"kernel": jnp.ones((2, 2))},
        "query_bias_like": {"bias": jnp.array([100.0, 100.0])}}}}}
    got = mask_stats.task_summary(mask, scores, count)
    assert got["block_selected"]["q"] == [75.0]
    assert got["block_selected"]["k"] == [25.0]
    assert got["block_selected"]["v"] == [None]
    # Selected scored elements with 0, 1, 2 earlier selections (the exempt bias is left out).
    assert got["overlap_histogram"] == [2, 1, 2]
    assert got["score_share"]["embed"] == pytest.approx(4 / 20, abs=0.5 * 10 ** -7)
    assert got["score_share"]["blocks"][0] == pytest.approx(16 / 20, abs=0.5 * 10 ** -7)


def test_unknown_units():
    with pytest.raises(ValueError, match="units"):
        masks.select_top(qkv_scores(), 0.1, units="fused")


if __name__ == "__main__":
    pytest.main([__file__])
