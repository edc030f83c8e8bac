"""ViT extension points (prompts, prefixes, adapters, SSF, token selection) checked against
independent references: the plain ViT forward written with flax's own
``nn.MultiHeadDotProductAttention`` (bitwise), and a float64 NumPy transcription of the
formulas of L2P / DualPrompt / AdaptFormer / SSF."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import erf

from mist_jax.models.extensions import (
    Extensions, init_adapters, init_prefix, init_prompts, init_ssf, ssf_sites)
from mist_jax.models.vit import MlpBlock, tiny_vit

N = 3
X = jax.random.uniform(jax.random.key(1), (N, 32, 32, 3))


def _setup(**kw):
    """A tiny ViT with every parameter perturbed (non-zero biases, non-unit LayerNorm scales)."""
    model = tiny_vit(**kw)
    params = model.init(jax.random.key(0), X)["params"]
    leaves, tree = jax.tree_util.tree_flatten(params)
    keys = jax.random.split(jax.random.key(2), len(leaves))
    leaves = [a + 0.1 * jax.random.normal(k, a.shape) for a, k in zip(leaves, keys)]
    return model, jax.tree_util.tree_unflatten(tree, leaves)


def _random_tree(key, tree, std=0.3):
    leaves, treedef = jax.tree_util.tree_flatten(tree)
    keys = jax.random.split(key, len(leaves))
    return jax.tree_util.tree_unflatten(
        treedef, [a + std * jax.random.normal(k, a.shape) for a, k in zip(leaves, keys)])


# --------------------------------------------------------------------------- references
def _flax_reference(model, params, x):
    """The plain ViT forward built from flax's own layers, applied one by one (CLS output)."""
    dt, d, p, eps = model.dtype, model.width, model.patch_size, model.layernorm_epsilon
    y = nn.Conv(d, (p, p), strides=(p, p), padding="VALID", dtype=dt).apply(
        {"params": params["patch_embed"]}, x.astype(dt))
    y = y.reshape(x.shape[0], -1, d)
    cls = jnp.broadcast_to(params["cls_token"].astype(dt), (x.shape[0], 1, d))
    y = jnp.concatenate([cls, y], axis=1) + params["pos_embed"].astype(dt)
    ln = lambda ps, t: nn.LayerNorm(epsilon=eps, dtype=dt).apply({"params": ps}, t)
    for i in range(model.depth):
        b = params[f"encoderblock_{i}"]
        h = ln(b["norm1"], y)
        mhdpa = nn.MultiHeadDotProductAttention(num_heads=model.num_heads, dtype=dt,
                                                deterministic=True)
        a = mhdpa.apply({"params": b["attn"]}, h, h)
        y = y + (a * b["ls1"]["scale"].astype(dt) if model.layerscale else a)
        m = MlpBlock(model.mlp_dim, model.gelu_approximate, dt).apply(
            {"params": b["mlp"]}, ln(b["norm2"], y))
        y = y + (m * b["ls2"]["scale"].astype(dt) if model.layerscale else m)
    return ln(params["encoder_norm"], y).astype(jnp.float32)[:, 0]


def _np(tree):
    return jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), tree)


def _ln(x, p, eps=1e-6):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * p["scale"] + p["bias"]


def np_embed(params, images, patch=8):
    """Patch embedding + CLS + position embedding, float64 [N, 1 + g*g, D]."""
    params, x = _np(params), np.asarray(images, np.float64)
    n, s, d = x.shape[0], x.shape[1], params["cls_token"].shape[-1]
    g = s // patch
    x = x.reshape(n, g, patch, g, patch, 3).transpose(0, 1, 3, 2, 4, 5).reshape(n, g * g, -1)
    return x @ params["patch_embed"]["kernel"].reshape(-1, d) + params["patch_embed"]["bias"]


def np_forward(params, images, heads, ext=None, logit_bias=None):
    """Float64 NumPy ViT forward with L2P and VPT-deep prompts, DualPrompt prefixes, AdaptFormer
    adapters and SSF written from their formulas; ``logit_bias`` [keys] is added to block 0's
    attention logits. Returns all tokens after the final LayerNorm, [N, 1 + P + g*g, D]."""
    ext = _np(ext or Extensions())
    ssf = ext.ssf or {}
    ss = lambda y, site: y * ssf[site]["scale"] + ssf[site]["shift"] if site in ssf else y
    relu_mlp = lambda h, a: np.maximum(h @ a["down"]["kernel"] + a["down"]["bias"], 0) @ \
        a["up"]["kernel"] + a["up"]["bias"]
    p = _np(params)
    x = ss(np_embed(params, images), "patch_embed")
    n, d = x.shape[0], x.shape[-1]
    x = np.concatenate([np.broadcast_to(p["cls_token"], (n, 1, d)), x], 1) + p["pos_embed"]
    if ext.prompts is not None:
        pr = np.broadcast_to(ext.prompts, (n,) + ext.prompts.shape[-2:])
        x = np.concatenate([x[:, :1], pr, x[:, 1:]], 1)
    i = 0
    while f"encoderblock_{i}" in p:
        b, site = p[f"encoderblock_{i}"], f"encoderblock_{i}/"
        if ext.deep_prompts is not None:  # VPT-deep: appended for this block only
            x = np.concatenate([x, np.broadcast_to(ext.deep_prompts[i],
                                                   (n,) + ext.deep_prompts.shape[1:])], 1)
        h = ss(_ln(x, b["norm1"]), site + "norm1")
        q, k, v = (h @ b["attn"][t]["kernel"].reshape(d, d) + b["attn"][t]["bias"].reshape(d)
                   for t in ("query", "key", "value"))
        if site + "qkv" in ssf:
            sc, sh = ssf[site + "qkv"]["scale"], ssf[site + "qkv"]["shift"]
            q, k, v = q * sc[0] + sh[0], k * sc[1] + sh[1], v * sc[2] + sh[2]
        if i in (ext.prefix or {}):
            flat = (t.reshape(t.shape[:2] + (d,)) if t.ndim == 4 else t for t in ext.prefix[i])
            pk, pv = (np.broadcast_to(t, (n,) + t.shape[-2:]) for t in flat)
            k, v = np.concatenate([pk, k], 1), np.concatenate([pv, v], 1)
        split = lambda t: t.reshape(n, t.shape[1], heads, d // heads)
        logits = np.einsum("nqhd,nkhd->nhqk", split(q), split(k)) / np.sqrt(d // heads)
        if logit_bias is not None and i == 0:
            logits = logits + logit_bias
        w = np.exp(logits - logits.max(-1, keepdims=True))
        w /= w.sum(-1, keepdims=True)
        o = np.einsum("nhqk,nkhd->nqhd", w, split(v)).reshape(n, -1, d)
        x = x + ss(o @ b["attn"]["out"]["kernel"].reshape(d, d) + b["attn"]["out"]["bias"],
                   site + "attn")
        h = ss(_ln(x, b["norm2"]), site + "norm2")
        m = ss(h @ b["mlp"]["fc1"]["kernel"] + b["mlp"]["fc1"]["bias"], site + "fc1")
        m = 0.5 * m * (1 + erf(m / np.sqrt(2)))
        y = ss(m @ b["mlp"]["fc2"]["kernel"] + b["mlp"]["fc2"]["bias"], site + "fc2")
        if i in (ext.adapters or {}):
            a, s = ext.adapters[i], ext.adapter_scale
            src = {"parallel": h, "parallel_residual": x, "sequential": y}[ext.adapter_mode]
            y = y + s * relu_mlp(src, a)
        x = x + y
        if ext.deep_prompts is not None:
            x = x[:, :-ext.deep_prompts.shape[1]]
        i += 1
    return ss(_ln(x, p["encoder_norm"]), "encoder_norm")


# --------------------------------------------------------------------------- no extensions
@pytest.mark.parametrize("kw", [{}, {"dtype": jnp.bfloat16}, {"layerscale": True, "depth": 3}])
def test_without_extensions_bitwise_equals_flax_mhdpa_forward(kw):
    model, params = _setup(**kw)
    got = model.apply({"params": params}, X)
    np.testing.assert_array_equal(got, _flax_reference(model, params, X))
    np.testing.assert_array_equal(got, model.apply({"params": params}, X, ext=Extensions()))


def test_param_tree_is_the_documented_one_with_or_without_extensions():
    model = tiny_vit()
    ext = Extensions(prompts=jnp.ones((2, 32)), prefix={0: (jnp.ones((2, 32)),) * 2},
                     adapters=init_adapters(jax.random.key(3), model, 4), ssf=init_ssf(model))
    shapes = lambda p: {jax.tree_util.keystr(k): v.shape
                        for k, v in jax.tree_util.tree_leaves_with_path(p)}
    plain = model.init(jax.random.key(0), X)["params"]
    with_ext = model.init(jax.random.key(0), X, ext=ext)["params"]
    jax.tree_util.tree_map(np.testing.assert_array_equal, plain, with_ext)
    want = {"['patch_embed']['kernel']": (8, 8, 3, 32), "['patch_embed']['bias']": (32,),
            "['cls_token']": (1, 1, 32), "['pos_embed']": (1, 17, 32),
            "['encoder_norm']['scale']": (32,), "['encoder_norm']['bias']": (32,)}
    for i in range(2):
        b = f"['encoderblock_{i}']"
        want.update({b + f"['{n}']['{w}']": (32,) for n in ("norm1", "norm2")
                     for w in ("scale", "bias")})
        for n in ("query", "key", "value"):
            want.update({b + f"['attn']['{n}']['kernel']": (32, 2, 16),
                         b + f"['attn']['{n}']['bias']": (2, 16)})
        want.update({b + "['attn']['out']['kernel']": (2, 16, 32),
                     b + "['attn']['out']['bias']": (32,),
                     b + "['mlp']['fc1']['kernel']": (32, 64), b + "['mlp']['fc1']['bias']": (64,),
                     b + "['mlp']['fc2']['kernel']": (64, 32), b + "['mlp']['fc2']['bias']": (32,)})
    assert shapes(plain) == want


# --------------------------------------------------------------------------- prompts
def test_prompts_sit_after_cls_without_position_embedding():
    model, params = _setup(depth=1)
    prompts = init_prompts(jax.random.key(4), model, 5)
    ext = Extensions(prompts=prompts)
    tokens = model.apply({"params": params}, X, ext=ext, tokens="all")
    assert tokens.shape == (N, 1 + 5 + 16, 32) and tokens.dtype == jnp.float32
    np.testing.assert_allclose(tokens, np_forward(params, X, 2, ext), atol=2e-5)
    cls, pr, patches = model.apply({"params": params}, X, ext=ext,
                                   tokens=("cls", "prompts", "patches"))
    np.testing.assert_array_equal(cls, tokens[:, 0])
    np.testing.assert_array_equal(pr, tokens[:, 1:6])
    np.testing.assert_array_equal(patches, tokens[:, 6:])
    per_sample = model.apply({"params": params}, X, ext=Extensions(
        prompts=jnp.broadcast_to(prompts, (N, 5, 32))), tokens="all")
    np.testing.assert_allclose(per_sample, tokens, atol=1e-6)


def test_deep_prompts_join_each_block_and_leave_after_it():
    model, params = _setup(depth=2)
    deep = init_prompts(jax.random.key(5), model, 3, pool=2)  # [L=2, P=3, D]
    ext = Extensions(deep_prompts=deep)
    tokens = model.apply({"params": params}, X, ext=ext, tokens="all")
    assert tokens.shape == (N, 1 + 16, 32)  # no prompt token survives
    np.testing.assert_allclose(tokens, np_forward(params, X, 2, ext), atol=2e-5)
    # Each block's prompts matter (they are not the same computation as no prompts).
    plain = model.apply({"params": params}, X, tokens="all")
    assert np.abs(np.asarray(tokens) - np.asarray(plain)).max() > 1e-3
    with pytest.raises(ValueError, match=r"deep_prompts must be float\[2, P, 32\]"):
        model.apply({"params": params}, X, ext=Extensions(deep_prompts=deep[:1]))


# --------------------------------------------------------------------------- prefixes
def test_prefix_matches_numpy_and_empty_prefix_is_no_prefix():
    model, params = _setup()
    apply = lambda ext: model.apply({"params": params}, X, ext=ext, tokens="all")
    empty = jnp.zeros((0, 32))
    np.testing.assert_array_equal(apply(Extensions(prefix={0: (empty, empty), 1: (empty, empty)})),
                                  apply(None))
    k0, k1 = jax.random.split(jax.random.key(5))
    pk, pv = jax.random.normal(k0, (2, N, 4, 32))
    shared = init_prefix(k1, model, 3, [0])[0]  # ([3, 32], [3, 32]), one prefix for the batch
    ext = Extensions(prefix={1: (pk, pv), 0: tuple(t[None] for t in shared)})
    got = apply(ext)
    np.testing.assert_allclose(got, np_forward(params, X, 2, ext), atol=2e-5)
    # [Lp, D] and the head-split [B, Lp, H, hd] layout give the same prefixes
    split = Extensions(prefix={1: (pk.reshape(N, 4, 2, 16), pv.reshape(N, 4, 2, 16)), 0: shared})
    np.testing.assert_allclose(apply(split), got, atol=1e-6)


def test_prefix_copying_a_token_doubles_its_attention_weight():
    """A prefix (key, value) equal to token j's projected key and value of block 0 must act as a
    second copy of token j: softmax weight exp(s_j) counted twice, i.e. logit s_j + log 2."""
    model, params = _setup(depth=1)
    p, j = _np(params), 3
    x0 = np_embed(params, X)
    x0 = np.concatenate([np.broadcast_to(p["cls_token"], (N, 1, 32)), x0], 1) + p["pos_embed"]
    h = _ln(x0, p["encoderblock_0"]["norm1"])[:, j:j + 1]
    attn = p["encoderblock_0"]["attn"]
    kv = tuple(jnp.asarray(h @ attn[t]["kernel"].reshape(32, 32) + attn[t]["bias"].reshape(32),
                           jnp.float32) for t in ("key", "value"))
    got = model.apply({"params": params}, X, ext=Extensions(prefix={0: kv}), tokens="all")
    bias = np.zeros(17)
    bias[j] = np.log(2.0)
    np.testing.assert_allclose(got, np_forward(params, X, 2, logit_bias=bias), atol=2e-5)


# --------------------------------------------------------------------------- adapters
def test_zero_up_adapter_is_exactly_the_identity():
    model, params = _setup()
    plain = model.apply({"params": params}, X, tokens="all")
    for mode in ("parallel", "parallel_residual", "sequential"):
        ext = Extensions(adapters=init_adapters(jax.random.key(6), model, 8), adapter_mode=mode,
                         adapter_scale=0.1)
        np.testing.assert_array_equal(model.apply({"params": params}, X, ext=ext, tokens="all"),
                                      plain)


def test_adapter_modes_follow_their_formulas():
    model, params = _setup(depth=1)
    adapters = _random_tree(jax.random.key(7), init_adapters(jax.random.key(6), model, 8))
    outs = []
    for mode in ("parallel", "parallel_residual", "sequential"):
        ext = Extensions(adapters=adapters, adapter_mode=mode, adapter_scale=0.5)
        got = model.apply({"params": params}, X, ext=ext, tokens="all")
        np.testing.assert_allclose(got, np_forward(params, X, 2, ext), atol=2e-5)
        outs.append(np.asarray(got))
    assert min(np.abs(a - b).max() for a, b in ((outs[0], outs[1]), (outs[0], outs[2]),
                                                 (outs[1], outs[2]))) > 1e-3


# --------------------------------------------------------------------------- SSF
def test_ssf_identity_doubling_and_every_site():
    model, params = _setup()
    apply = lambda ext: model.apply({"params": params}, X, ext=ext, tokens="all")
    plain = apply(None)
    np.testing.assert_array_equal(apply(Extensions(ssf=init_ssf(model))), plain)
    double = init_ssf(model, ["encoder_norm"])
    double["encoder_norm"]["scale"] = 2 * double["encoder_norm"]["scale"]
    np.testing.assert_array_equal(apply(Extensions(ssf=double)), 2 * plain)
    ssf = init_ssf(model, key=jax.random.key(8), std=0.3)
    assert set(ssf) == set(ssf_sites(model)) and len(ssf) == 2 + 6 * model.depth
    assert ssf["encoderblock_1/qkv"]["scale"].shape == (3, 32)
    assert ssf["encoderblock_0/fc1"]["shift"].shape == (64,)
    ext = Extensions(ssf=ssf)
    np.testing.assert_allclose(apply(ext), np_forward(params, X, 2, ext), atol=2e-5)


# --------------------------------------------------------------------------- autodiff, jit, remat
def _full_ext(model, key):
    ks = jax.random.split(key, 5)
    return Extensions(prompts=init_prompts(ks[0], model, 3),
                      deep_prompts=init_prompts(ks[4], model, 2, pool=model.depth),
                      prefix=init_prefix(ks[1], model, 2, [0, 1]),
                      adapters=_random_tree(ks[2], init_adapters(ks[2], model, 4)),
                      ssf=init_ssf(model, key=ks[3]), adapter_mode="sequential",
                      adapter_scale=0.1)


def test_gradients_reach_every_extension_leaf_and_jit_agrees():
    model, params = _setup()
    ext = _full_ext(model, jax.random.key(9))
    loss = lambda e, p: jnp.sum(model.apply({"params": p}, X, ext=e, tokens="prompts") ** 2)
    grads = jax.grad(loss)(ext, params)
    assert jax.tree_util.tree_structure(grads) == jax.tree_util.tree_structure(ext)
    assert grads.adapter_mode == "sequential" and grads.adapter_scale == 0.1
    for path, g in jax.tree_util.tree_leaves_with_path(grads):
        assert np.abs(g).max() > 0, jax.tree_util.keystr(path)
    eager = model.apply({"params": params}, X, ext=ext, tokens="all")
    jitted = jax.jit(lambda p, e: model.apply({"params": p}, X, ext=e, tokens="all"))(params, ext)
    np.testing.assert_allclose(jitted, eager, atol=1e-5)


def test_extensions_under_remat_and_bfloat16():
    model, params = _setup()
    ext = _full_ext(model, jax.random.key(10))
    loss = lambda m: lambda e: jnp.sum(m.apply({"params": params}, X, ext=e) ** 2)
    remat = model.clone(remat=True)
    np.testing.assert_allclose(remat.apply({"params": params}, X, ext=ext),
                               model.apply({"params": params}, X, ext=ext), atol=1e-6)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5),
                           jax.grad(loss(remat))(ext), jax.grad(loss(model))(ext))
    out16 = model.clone(dtype=jnp.bfloat16).apply({"params": params}, X, ext=ext)
    assert out16.dtype == jnp.float32
    np.testing.assert_allclose(out16, model.apply({"params": params}, X, ext=ext), atol=0.15)


# --------------------------------------------------------------------------- errors
@pytest.mark.parametrize("ext, kw, match", [
    (Extensions(), {"tokens": "prompts"}, "needs ext"),
    (Extensions(), {"tokens": "pooled"}, "tokens must be"),
    (Extensions(), {"tokens": "all", "return_tokens": True}, "not both"),
    (Extensions(prompts=jnp.ones((2, 31))), {}, "prompts must be"),
    (Extensions(prompts=jnp.ones((2, 4, 32))), {}, "batch of 3"),
    (Extensions(prefix={2: (jnp.ones((2, 32)),) * 2}), {}, "blocks 0..1"),
    (Extensions(prefix={0: (jnp.ones((2, 32)), jnp.ones((3, 32)))}), {}, "share one shape"),
    (Extensions(adapters={0: {"down": {"kernel": jnp.ones((32, 4)), "bias": jnp.ones(4)},
                              "up": {"kernel": jnp.ones((4, 32)), "bias": jnp.ones(32)}}},
                adapter_mode="serial"), {}, "adapter_mode"),
    (Extensions(ssf={"encoderblock_0/mlp": {"scale": jnp.ones(32), "shift": jnp.ones(32)}}), {},
     "unknown SSF site"),
    (Extensions(ssf={"encoderblock_0/fc1": {"scale": jnp.ones(32), "shift": jnp.ones(32)}}), {},
     r"\(64,\)"),
])
def test_bad_extensions_are_rejected(ext, kw, match):
    model = tiny_vit()
    params = model.init(jax.random.key(0), X)["params"]
    with pytest.raises(ValueError, match=match):
        model.apply({"params": params}, X, ext=ext, **kw)
