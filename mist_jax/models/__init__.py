"""Backbones: the Flax ViT and its pre-trained checkpoints."""

from mist_jax.models.pretrained import EMBEDDED, default_preprocess, load_pretrained, save_npz
from mist_jax.models.resample import resample_pos_embed
from mist_jax.models.vit import ViT, tiny_vit

__all__ = ["EMBEDDED", "ViT", "default_preprocess", "load_pretrained", "resample_pos_embed",
           "save_npz", "tiny_vit"]
