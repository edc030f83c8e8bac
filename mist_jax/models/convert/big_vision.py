"""big_vision / AugReg ``.npz`` checkpoints -> the mist-jax ViT parameter tree.

The format of ``gs://vit_models/augreg/*.npz`` and of the 2020 release
``gs://vit_models/imagenet21k/ViT-B_16.npz`` (Dosovitskiy et al. 2020; Steiner et al. 2021):
keys such as ``Transformer/encoderblock_0/MultiHeadDotProductAttention_1/query/kernel``,
optionally under ``params/``. Its layouts already are Flax's (kernels [in, out], attention
kernels [D, H, hd] / [H, hd, D]), so conversion only renames.
"""

from __future__ import annotations

from collections.abc import Iterable

from mist_jax.models.convert.keys import count_blocks, get_array

SOURCE = "big_vision npz"


def is_big_vision(keys: Iterable[str]) -> bool:
    """Whether an npz's array names are big_vision ones (some key under ``Transformer/``,
    optionally prefixed ``params/``); mist-jax's own npz files (``save_npz``) have none."""
    return any(k.removeprefix("params/").startswith("Transformer/") for k in keys)


def _block(flat: dict, i: int) -> dict:
    """Encoder block ``i``: big_vision names -> ``norm1, attn, norm2, mlp`` subtree."""
    b = f"Transformer/encoderblock_{i}/"
    att = b + "MultiHeadDotProductAttention_1/"
    mlp = b + "MlpBlock_3/"
    g = lambda k: get_array(flat, k, SOURCE)
    return {
        "norm1": {"scale": g(b + "LayerNorm_0/scale"), "bias": g(b + "LayerNorm_0/bias")},
        "attn": {n: {"kernel": g(att + f"{n}/kernel"), "bias": g(att + f"{n}/bias")}
                 for n in ("query", "key", "value", "out")},
        "norm2": {"scale": g(b + "LayerNorm_2/scale"), "bias": g(b + "LayerNorm_2/bias")},
        "mlp": {f"fc{j + 1}": {"kernel": g(mlp + f"Dense_{j}/kernel"),
                               "bias": g(mlp + f"Dense_{j}/bias")} for j in range(2)},
    }


def from_big_vision(flat: dict, num_heads: int | None = None) -> dict:
    """big_vision / AugReg arrays -> mist-jax ViT tree (``mist_jax.models.vit``).

    Args:
      flat: ``{name: array}`` as stored in the npz (``Transformer/...``, ``embedding/...``,
        ``cls``; a ``params/`` prefix is dropped; the head and pre-logits are ignored).
      num_heads: unused; the head count is in the attention kernels' shapes [D, H, hd].
    Returns: nested dict of numpy arrays in the file's dtype, e.g. ``patch_embed/kernel``
      [p, p, 3, D], ``cls_token`` [1, 1, D], ``pos_embed`` [1, 1 + g*g, D].
    Raises:
      ValueError: a missing key (named) or non-consecutive ``encoderblock_N`` indices.
    """
    del num_heads
    flat = {k.removeprefix("params/"): v for k, v in flat.items()}
    depth = count_blocks(flat, r"Transformer/encoderblock_(\d+)/")
    g = lambda k: get_array(flat, k, SOURCE)
    tree = {
        "patch_embed": {"kernel": g("embedding/kernel"), "bias": g("embedding/bias")},
        "cls_token": g("cls"),
        "pos_embed": g("Transformer/posembed_input/pos_embedding"),
        "encoder_norm": {"scale": g("Transformer/encoder_norm/scale"),
                         "bias": g("Transformer/encoder_norm/bias")},
    }
    for i in range(depth):
        tree[f"encoderblock_{i}"] = _block(flat, i)
    return tree
