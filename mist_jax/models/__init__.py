"""Backbones: the Flax ViT, its learner-owned extensions and its pre-trained checkpoints."""

from mist_jax.models.extensions import (
    Extensions, init_adapters, init_prefix, init_prompts, init_ssf)
from mist_jax.models.pretrained import EMBEDDED, default_preprocess, load_pretrained, save_npz
from mist_jax.models.resample import resample_pos_embed
from mist_jax.models.vit import ViT, tiny_vit

__all__ = ["EMBEDDED", "Extensions", "ViT", "default_preprocess", "init_adapters", "init_prefix",
           "init_prompts", "init_ssf", "load_pretrained", "resample_pos_embed", "save_npz",
           "tiny_vit"]
