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


def to_timm(tree: dict) -> dict[str, np.ndarray]:
    """mist-jax ViT tree -> timm ViT state dict: the inverse of ``from_timm``.

    For handing a (tuned) backbone to PyTorch: ``timm.create_model(name, img_size=S,
    num_classes=0).load_state_dict({k: torch.from_numpy(v) ...})`` (e.g. DINOv2-S/14 is
    ``vit_small_patch14_dinov2`` with ``img_size`` the tree's pos_embed grid times 14).

    Args:
      tree: ``patch_embed``, ``cls_token``, ``pos_embed``, ``encoder_norm`` and
        ``encoderblock_{i}`` as ``from_timm`` returns them (numpy or jax arrays); prompts,
        adapters and other extension leaves are not part of a timm ViT and are refused.
    Returns: ``{timm name: numpy array}`` in PyTorch layouts (Conv OIHW, Linear [out, in],
      fused ``attn.qkv`` [3 D, D]).
    Raises:
      ValueError: a key that is neither a backbone leaf nor a block, named.
    """
    known = {"patch_embed", "cls_token", "pos_embed", "encoder_norm"}
    extra = [k for k in tree if k not in known and not k.startswith("encoderblock_")]
    if extra:
        raise ValueError(f"to_timm: {extra} are not part of a timm ViT (convert the plain "
                         "backbone tree, without prompts or adapters).")
    a = np.asarray
    flat = {"patch_embed.proj.weight": a(tree["patch_embed"]["kernel"]).transpose(3, 2, 0, 1),
            "patch_embed.proj.bias": a(tree["patch_embed"]["bias"]),
            "cls_token": a(tree["cls_token"]), "pos_embed": a(tree["pos_embed"]),
            "norm.weight": a(tree["encoder_norm"]["scale"]),
            "norm.bias": a(tree["encoder_norm"]["bias"])}
    depth = sum(k.startswith("encoderblock_") for k in tree)
    for i in range(depth):
        blk, b = tree[f"encoderblock_{i}"], f"blocks.{i}."
        attn = blk["attn"]
        width = a(attn["query"]["kernel"]).shape[0]
        flat[b + "attn.qkv.weight"] = np.concatenate(
            [a(attn[n]["kernel"]).reshape(width, width).T for n in ("query", "key", "value")])
        flat[b + "attn.qkv.bias"] = np.concatenate(
            [a(attn[n]["bias"]).reshape(width) for n in ("query", "key", "value")])
        flat[b + "attn.proj.weight"] = a(attn["out"]["kernel"]).reshape(width, width).T
        flat[b + "attn.proj.bias"] = a(attn["out"]["bias"])
        for n in ("norm1", "norm2"):
            flat[b + n + ".weight"], flat[b + n + ".bias"] = a(blk[n]["scale"]), a(blk[n]["bias"])
        for j in (1, 2):
            flat[b + f"mlp.fc{j}.weight"] = a(blk["mlp"][f"fc{j}"]["kernel"]).T
            flat[b + f"mlp.fc{j}.bias"] = a(blk["mlp"][f"fc{j}"]["bias"])
        for n in ("ls1", "ls2"):
            if n in blk:
                flat[b + n + ".gamma"] = a(blk[n]["scale"])
    return flat
