"""Flax ViT and pre-trained loaders, checked against independent references:
onnxruntime on the original ONNX graph, a NumPy transcription of timm's ViT forward, and
ONNX's own Resize operator for the position-embedding resampling."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax.traverse_util import flatten_dict

from mist_jax.data import get_preprocess
from mist_jax.models import load_pretrained, resample_pos_embed, save_npz, tiny_vit


# --------------------------------------------------------------------------- numpy reference
def _ln(x, w, b, eps=1e-6):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def _gelu(x):
    from math import erf
    return 0.5 * x * (1 + np.vectorize(erf)(x / np.sqrt(2)))


def timm_vit_forward(sd, images, heads):
    """NumPy transcription of timm's VisionTransformer.forward_features + CLS pooling, from the
    PyTorch state-dict layouts (Conv OIHW, Linear [out, in], fused qkv)."""
    w = sd["patch_embed.proj.weight"]  # [D, 3, p, p]
    d, _, p, _ = w.shape
    n, s = images.shape[0], images.shape[1]
    g = s // p
    patches = images.reshape(n, g, p, g, p, 3).transpose(0, 1, 3, 5, 2, 4).reshape(n, g * g, -1)
    x = patches @ w.reshape(d, -1).T + sd["patch_embed.proj.bias"]
    x = np.concatenate([np.broadcast_to(sd["cls_token"], (n, 1, d)), x], 1) + sd["pos_embed"]
    i = 0
    while f"blocks.{i}.norm1.weight" in sd:
        b = f"blocks.{i}."
        y = _ln(x, sd[b + "norm1.weight"], sd[b + "norm1.bias"])
        qkv = y @ sd[b + "attn.qkv.weight"].T + sd[b + "attn.qkv.bias"]
        q, k, v = np.split(qkv.reshape(n, -1, 3, heads, d // heads).transpose(2, 0, 3, 1, 4), 3)
        a = (q[0] @ k[0].transpose(0, 1, 3, 2)) / np.sqrt(d // heads)
        a = np.exp(a - a.max(-1, keepdims=True))
        a = a / a.sum(-1, keepdims=True)
        o = (a @ v[0]).transpose(0, 2, 1, 3).reshape(n, -1, d)
        x = x + o @ sd[b + "attn.proj.weight"].T + sd[b + "attn.proj.bias"]
        y = _ln(x, sd[b + "norm2.weight"], sd[b + "norm2.bias"])
        y = _gelu(y @ sd[b + "mlp.fc1.weight"].T + sd[b + "mlp.fc1.bias"])
        x = x + y @ sd[b + "mlp.fc2.weight"].T + sd[b + "mlp.fc2.bias"]
        i += 1
    return _ln(x, sd["norm.weight"], sd["norm.bias"])[:, 0]


def _timm_state_dict(rng, width=64, depth=2, patch=8, grid=4, mlp=128):
    sd = {"patch_embed.proj.weight": rng.randn(width, 3, patch, patch) * 0.05,
          "patch_embed.proj.bias": rng.randn(width) * 0.1,
          "cls_token": rng.randn(1, 1, width) * 0.5,
          "pos_embed": rng.randn(1, 1 + grid * grid, width) * 0.5,
          "norm.weight": 1 + rng.randn(width) * 0.1, "norm.bias": rng.randn(width) * 0.1,
          "head.weight": rng.randn(10, width), "head.bias": rng.randn(10)}
    for i in range(depth):
        b = f"blocks.{i}."
        sd.update({b + "norm1.weight": 1 + rng.randn(width) * 0.1, b + "norm1.bias": rng.randn(width) * 0.1,
                   b + "attn.qkv.weight": rng.randn(3 * width, width) * 0.1,
                   b + "attn.qkv.bias": rng.randn(3 * width) * 0.1,
                   b + "attn.proj.weight": rng.randn(width, width) * 0.1,
                   b + "attn.proj.bias": rng.randn(width) * 0.1,
                   b + "norm2.weight": 1 + rng.randn(width) * 0.1, b + "norm2.bias": rng.randn(width) * 0.1,
                   b + "mlp.fc1.weight": rng.randn(mlp, width) * 0.1, b + "mlp.fc1.bias": rng.randn(mlp) * 0.1,
                   b + "mlp.fc2.weight": rng.randn(width, mlp) * 0.1, b + "mlp.fc2.bias": rng.randn(width) * 0.1})
    return {k: v.astype(np.float32) for k, v in sd.items()}


# --------------------------------------------------------------------------- ViT module
def test_vit_shapes_dtypes_and_remat():
    model = tiny_vit()
    x = jax.random.uniform(jax.random.key(1), (3, 32, 32, 3))
    params = model.init(jax.random.key(0), x)["params"]
    cls, tokens = model.apply({"params": params}, x, return_tokens=True)
    assert cls.shape == (3, 32) and cls.dtype == jnp.float32
    assert tokens.shape == (3, 1 + 16, 32)
    np.testing.assert_array_equal(cls, tokens[:, 0])
    # remat changes memory, not values or gradients
    loss = lambda m: lambda p: jnp.sum(m.apply({"params": p}, x) ** 2)
    g0 = jax.grad(loss(model))(params)
    g1 = jax.grad(loss(model.clone(remat=True)))(params)
    jax.tree_util.tree_map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), g0, g1)
    # bfloat16 compute keeps float32 params and a float32 output close to the float32 one
    out16 = model.clone(dtype=jnp.bfloat16).apply({"params": params}, x)
    assert out16.dtype == jnp.float32
    np.testing.assert_allclose(out16, cls, atol=0.1)


def test_vit_rejects_wrong_image_size():
    model = tiny_vit()
    params = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))["params"]
    with pytest.raises(ValueError, match="image_size=48"):
        model.apply({"params": params}, jnp.zeros((1, 48, 48, 3)))


# --------------------------------------------------------------------------- embedded DINOv2
def test_embedded_dinov2_matches_onnxruntime():
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from mist_jax.models.convert.onnx_dinov2 import onnx_path

    model, params = load_pretrained("dinov2_vits14_imgfocus", image_size=224)
    assert (model.width, model.depth, model.num_heads, model.patch_size, model.layerscale) == (
        384, 12, 6, 14, True)
    assert sum(x.size for x in jax.tree_util.tree_leaves(params)) == pytest.approx(21.6e6, rel=0.01)
    graph = onnx.load(str(onnx_path()))
    name = "/backbone/layernorm/Add_1_output_0"  # final LayerNorm output, all tokens
    graph.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    sess = ort.InferenceSession(graph.SerializeToString(), providers=["CPUExecutionProvider"])
    x = np.random.RandomState(0).randn(2, 224, 224, 3).astype(np.float32)
    want = sess.run([name], {"input_image": x.transpose(0, 3, 1, 2)})[0]
    _, got = jax.jit(lambda p, x: model.apply({"params": p}, x, return_tokens=True))(params, x)
    assert np.abs(np.asarray(got) - want).max() <= 1e-4


def test_embedded_resampled_to_small_input_runs():
    model, params = load_pretrained("dinov2_vits14_imgfocus", image_size=56)
    assert model.image_size == 56 and params["pos_embed"].shape == (1, 1 + 16, 384)
    x = get_preprocess("imagenet")(np.random.RandomState(1).rand(2, 56, 56, 3).astype(np.float32))
    f = model.apply({"params": params}, x)
    assert f.shape == (2, 384) and np.isfinite(f).all()


# --------------------------------------------------------------------------- resampling
def test_resample_matches_onnx_resize_cubic():
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from onnx import TensorProto, helper

    rng = np.random.RandomState(0)
    pos = rng.randn(1, 1 + 37 * 37, 5).astype(np.float32)
    for new in (16, 4, 50):
        node = helper.make_node("Resize", ["x", "", "", "sizes"], ["y"], mode="cubic",
                                coordinate_transformation_mode="half_pixel", cubic_coeff_a=-0.75)
        g = helper.make_graph(
            [node], "r", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 5, 37, 37])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
            initializer=[helper.make_tensor("sizes", TensorProto.INT64, [4], [1, 5, new, new])])
        m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 14)])
        sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
        grid = pos[0, 1:].reshape(37, 37, 5).transpose(2, 0, 1)[None]
        want = sess.run(["y"], {"x": grid})[0][0].transpose(1, 2, 0).reshape(-1, 5)
        got = resample_pos_embed(pos, new)
        # onnxruntime computes source coordinates in float32: ~1e-5 off for ratios like 37/50.
        np.testing.assert_allclose(got[0, 1:], want, atol=2e-5)
        np.testing.assert_array_equal(got[0, 0], pos[0, 0])
    np.testing.assert_array_equal(resample_pos_embed(pos, 37), pos)


# --------------------------------------------------------------------------- timm safetensors
def test_timm_safetensors_matches_numpy_reference(tmp_path):
    from safetensors.numpy import save_file

    sd = _timm_state_dict(np.random.RandomState(0))
    path = tmp_path / "model.safetensors"
    save_file(sd, str(path))
    model, params = load_pretrained(str(path))  # heads = 64 // 64 = 1
    assert (model.width, model.depth, model.num_heads, model.patch_size, model.image_size) == (
        64, 2, 1, 8, 32)
    x = np.random.RandomState(1).rand(2, 32, 32, 3).astype(np.float32)
    got = np.asarray(model.apply({"params": params}, x))
    np.testing.assert_allclose(got, timm_vit_forward(sd, x.astype(np.float64), 1), atol=2e-4)
    model4, params4 = load_pretrained(str(path), num_heads=4)
    np.testing.assert_allclose(model4.apply({"params": params4}, x),
                               timm_vit_forward(sd, x.astype(np.float64), 4), atol=2e-4)


def test_timm_missing_key_and_bad_shape_are_named(tmp_path):
    from safetensors.numpy import save_file

    sd = _timm_state_dict(np.random.RandomState(0))
    bad = dict(sd)
    del bad["blocks.1.mlp.fc2.bias"]
    save_file(bad, str(tmp_path / "a.safetensors"))
    with pytest.raises(ValueError, match="blocks.1.mlp.fc2.bias"):
        load_pretrained(str(tmp_path / "a.safetensors"))
    bad = dict(sd)
    bad["blocks.0.mlp.fc2.bias"] = np.zeros(65, np.float32)
    save_file(bad, str(tmp_path / "b.safetensors"))
    with pytest.raises(ValueError, match=r"encoderblock_0/mlp/fc2/bias.*\(65,\).*\(64,\)"):
        load_pretrained(str(tmp_path / "b.safetensors"))


# --------------------------------------------------------------------------- npz formats
def _init_tiny(**kw):
    model = tiny_vit(**kw)
    params = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))["params"]
    return model, jax.tree_util.tree_map(np.asarray, params)


def test_native_npz_round_trip(tmp_path):
    model, params = _init_tiny(layerscale=True)
    save_npz(params, tmp_path / "w.npz")
    model2, params2 = load_pretrained(str(tmp_path / "w.npz"))
    assert model2.layerscale and model2.num_heads == 2 and model2.mlp_dim == 64
    flat, flat2 = flatten_dict(params, sep="/"), flatten_dict(params2, sep="/")
    assert flat.keys() == flat2.keys()
    for k, v in flat.items():
        np.testing.assert_array_equal(v, flat2[k])


def _big_vision_flat(params):
    """A tiny ViT's params under big_vision / AugReg npz key names (with a 10-class head)."""
    flat = {"cls": params["cls_token"], "embedding/kernel": params["patch_embed"]["kernel"],
            "embedding/bias": params["patch_embed"]["bias"],
            "Transformer/posembed_input/pos_embedding": params["pos_embed"],
            "Transformer/encoder_norm/scale": params["encoder_norm"]["scale"],
            "Transformer/encoder_norm/bias": params["encoder_norm"]["bias"],
            "head/kernel": np.zeros((32, 10), np.float32)}
    for i in range(2):
        blk, b = params[f"encoderblock_{i}"], f"Transformer/encoderblock_{i}/"
        for ours, theirs in (("norm1", "LayerNorm_0"), ("norm2", "LayerNorm_2")):
            for leaf in ("scale", "bias"):
                flat[f"{b}{theirs}/{leaf}"] = blk[ours][leaf]
        for n in ("query", "key", "value", "out"):
            for leaf in ("kernel", "bias"):
                flat[f"{b}MultiHeadDotProductAttention_1/{n}/{leaf}"] = blk["attn"][n][leaf]
        for j in range(2):
            for leaf in ("kernel", "bias"):
                flat[f"{b}MlpBlock_3/Dense_{j}/{leaf}"] = blk["mlp"][f"fc{j + 1}"][leaf]
    return flat


def test_big_vision_npz_loads_with_augreg_names(tmp_path):
    model, params = _init_tiny()
    flat = _big_vision_flat(params)
    np.savez(tmp_path / "bv.npz", **flat)
    model2, params2 = load_pretrained(str(tmp_path / "bv.npz"), image_size=48)
    assert model2.image_size == 48 and params2["pos_embed"].shape == (1, 37, 32)
    _, params3 = load_pretrained(str(tmp_path / "bv.npz"))
    x = np.random.RandomState(0).rand(2, 32, 32, 3).astype(np.float32)
    np.testing.assert_array_equal(model.apply({"params": params}, x),
                                  model.apply({"params": params3}, x))


def _load_and_capture_warnings(path):
    """Load ``path`` and return the absl warnings it logged (absl logs through the ``absl``
    Python logger; a handler on it sees them whatever absl's own verbosity)."""
    import logging as pylogging

    records = []
    handler = pylogging.Handler(pylogging.WARNING)
    handler.emit = records.append
    logger = pylogging.getLogger("absl")
    logger.addHandler(handler)
    try:
        load_pretrained(str(path))
    finally:
        logger.removeHandler(handler)
    return [r.getMessage() for r in records if r.levelno == pylogging.WARNING]


def test_2020_in21k_file_loads_with_a_warning(tmp_path):
    _, params = _init_tiny()
    augreg = _big_vision_flat(params)
    np.savez(tmp_path / "augreg.npz", **augreg)
    assert _load_and_capture_warnings(tmp_path / "augreg.npz") == []
    # The 2020 release has a pre-logits layer (representation 768 for B/16; 32 here).
    old = dict(augreg, **{"pre_logits/kernel": np.zeros((32, 32), np.float32),
                          "pre_logits/bias": np.zeros((32,), np.float32)})
    np.savez(tmp_path / "vit_base_patch16_224_in21k.npz", **old)
    (msg,) = _load_and_capture_warnings(tmp_path / "vit_base_patch16_224_in21k.npz")
    assert "2020" in msg and "'pre_logits/kernel'" in msg
    assert "B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0.npz" in msg
    # ... or is recognised by its released file name.
    np.savez(tmp_path / "ViT-B_16.npz", **augreg)
    (msg,) = _load_and_capture_warnings(tmp_path / "ViT-B_16.npz")
    assert "'ViT-B_16.npz'" in msg


def test_named_backbone_is_the_augreg_file():
    from mist_jax.models.pretrained import NAMED
    text = NAMED["vit_base_patch16_224_in21k"]
    assert "gs://vit_models/augreg/B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0.npz" in text
    assert "timm/vit_base_patch16_224.augreg_in21k" in text
    ft = NAMED["vit_base_patch16_224"]  # LAMDA-PILOT's: timm 0.6.12's IN21k -> IN1k file
    assert ("gs://vit_models/augreg/B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0"
            "--imagenet2012-steps_20k-lr_0.01-res_224.npz") in ft
    assert "timm/vit_base_patch16_224.augreg_in21k_ft_in1k" in ft


def test_the_in1k_fine_tuned_name_loads_from_the_cache_dir(tmp_path, monkeypatch):
    """A big_vision file with a 1000-class ImageNet-1k head, placed under its name, loads as
    ``model.source = "vit_base_patch16_224"`` (the head is not used)."""
    from mist_jax.models.pretrained import abstract_pretrained

    monkeypatch.setenv("MIST_JAX_CACHE", str(tmp_path))
    model, params = _init_tiny()
    flat = dict(_big_vision_flat(params), **{"head/kernel": np.zeros((32, 1000), np.float32),
                                              "head/bias": np.zeros(1000, np.float32)})
    np.savez(tmp_path / "vit_base_patch16_224.npz", **flat)
    _, loaded = load_pretrained("vit_base_patch16_224")
    x = np.random.RandomState(0).rand(2, 32, 32, 3).astype(np.float32)
    np.testing.assert_array_equal(model.apply({"params": params}, x),
                                  model.apply({"params": loaded}, x))
    big, shapes = abstract_pretrained("vit_base_patch16_224", 224)  # no file read: ViT-B/16
    assert big.width == 768 and shapes["pos_embed"].shape == (1, 197, 768)


def test_bad_sources_raise_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither"):
        load_pretrained(str(tmp_path / "nope.npz"))
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a readable .npz"):
        load_pretrained(str(tmp_path / "junk.npz"))
    _, params = _init_tiny()
    with pytest.raises(ValueError, match="multiple of the patch size"):
        save_npz(params, tmp_path / "w.npz")
        load_pretrained(str(tmp_path / "w.npz"), image_size=30)


def test_an_npz_that_is_not_a_vit_is_named(tmp_path):
    np.savez(tmp_path / "other.npz", a=np.zeros(3), b=np.ones((2, 2)))
    with pytest.raises(ValueError, match=r"other\.npz: not a ViT checkpoint: no \['cls_token'"):
        load_pretrained(str(tmp_path / "other.npz"))


def test_a_damaged_embedded_weights_cache_is_rebuilt(tmp_path, monkeypatch):
    """A flipped byte inside the cached npz's array data (the zip directory intact) is found
    by its CRC and the file is converted again from the ONNX graph, not trusted."""
    from mist_jax.models.pretrained import embedded_npz

    monkeypatch.setenv("MIST_JAX_CACHE", str(tmp_path))
    path = embedded_npz()
    good = path.read_bytes()
    data = bytearray(good)
    data[len(data) // 2] ^= 1
    path.write_bytes(bytes(data))
    assert embedded_npz() == path and path.read_bytes() == good
