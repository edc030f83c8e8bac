"""timm / Hugging Face ``model.safetensors`` ViT state dicts -> the mist-jax ViT parameter tree.

timm ViTs (``vit_tiny/small/base_patch16_224[.augreg_in21k]``) store PyTorch layouts:
``patch_embed.proj.weight`` Conv OIHW, Linear weights [out, in], the query/key/value
projections fused in ``blocks.N.attn.qkv``, LayerScale as ``blocks.N.ls1.gamma``
(timm ``vision_transformer.py``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mist_jax.models.convert.keys import count_blocks, get_array

SOURCE = "timm safetensors"


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """All tensors of a ``.safetensors`` file as ``{name: numpy array}`` (stored shapes/dtypes).

    Raises:
      ValueError: the file is not a readable safetensors file (the reader's message included).
    """
    from safetensors.numpy import load_file
    try:
        return load_file(str(path))
    except Exception as e:
        raise ValueError(f"{path}: not a readable safetensors file ({e}).") from e


def from_timm(flat: dict, num_heads: int | None = None) -> dict:
    """timm ViT state dict -> mist-jax ViT tree (``mist_jax.models.vit``).

    Args:
      flat: ``{name: array}`` of a timm ViT; the head and other extra keys are ignored.
      num_heads: attention heads H; default ``max(D // 64, 1)``, timm's convention.
    Returns: nested dict of numpy arrays in the file's dtype: ``patch_embed/kernel``
      [p, p, 3, D] (from OIHW), query/key/value kernels [D, H, D/H] and biases [H, D/H] split
      from ``qkv``, ``out`` kernel [H, D/H, D], MLP kernels [in, out], ``ls1``/``ls2`` when the
      file has LayerScale.
    Raises:
      ValueError: a missing key (named), non-consecutive ``blocks.N`` indices, or a ``qkv``
        weight that is not [3 D, D].
    """
    g = lambda k: get_array(flat, k, SOURCE)
    width = g("cls_token").shape[-1]
    num_heads = num_heads or max(width // 64, 1)
    hd = width // num_heads
    depth = count_blocks(flat, r"blocks\.(\d+)\.")
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
