"""``to_timm`` inverts ``from_timm``: a timm state dict written by PyTorch (the parity golden
file's initial ViT, fused qkv) comes back key for key and bit for bit."""

import json
from pathlib import Path

import numpy as np
import pytest

from mist_jax.models.convert.timm import from_timm, to_timm

GOLDEN = Path(__file__).parents[1] / "parity" / "golden" / "simplecil.npz"


def test_to_timm_inverts_from_timm_on_a_torch_written_state_dict():
    z = np.load(GOLDEN)
    meta = json.loads(str(z["meta"]))
    flat = {n: z["init/" + n] for n in meta["names"] if not n.startswith("simclr.")}
    back = to_timm(from_timm(flat, meta["heads"]))
    assert sorted(back) == sorted(flat)
    for name, value in flat.items():
        np.testing.assert_array_equal(back[name], value, err_msg=name)
        assert back[name].shape == value.shape, name


def test_to_timm_keeps_layerscale_and_refuses_extensions():
    z = np.load(GOLDEN)
    meta = json.loads(str(z["meta"]))
    flat = {n: z["init/" + n] for n in meta["names"] if not n.startswith("simclr.")}
    width = flat["cls_token"].shape[-1]
    flat["blocks.0.ls1.gamma"] = np.full(width, 0.5, np.float16)
    flat["blocks.0.ls2.gamma"] = np.full(width, 0.25, np.float16)
    back = to_timm(from_timm(flat, meta["heads"]))
    np.testing.assert_array_equal(back["blocks.0.ls2.gamma"], flat["blocks.0.ls2.gamma"])
    tree = dict(from_timm(flat, meta["heads"]), prompt=np.zeros((4, width)))
    with pytest.raises(ValueError, match="prompt"):
        to_timm(tree)
