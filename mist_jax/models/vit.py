"""A pure-functional Flax (linen) Vision Transformer: the backbone MIST tunes.

One module covers the three families mist-jax loads (``models/pretrained.py``): big_vision /
AugReg ViTs, timm ViTs and DINOv2 (LayerScale). Pre-LN encoder blocks, a cls token, a learned
position embedding and a final LayerNorm; the output is the CLS token after that LayerNorm
(docs/benchmarks.md; the official ``utils/inc_net.py`` builds ``timm.create_model(
"vit_base_patch16_224_in21k", pretrained=True, num_classes=0)``, whose output is that token).

Parameter tree (``D`` width, ``H`` heads, ``hd = D // H``, ``M`` MLP width, ``p`` patch, ``g`` grid)::

    patch_embed/{kernel [p, p, 3, D], bias [D]}
    cls_token [1, 1, D]
    pos_embed [1, 1 + g*g, D]
    encoderblock_{i}/norm1/{scale, bias} [D]
    encoderblock_{i}/attn/{query,key,value}/{kernel [D, H, hd], bias [H, hd]}
    encoderblock_{i}/attn/out/{kernel [H, hd, D], bias [D]}
    encoderblock_{i}/ls1/scale [D]            (LayerScale only)
    encoderblock_{i}/norm2/{scale, bias} [D]
    encoderblock_{i}/mlp/fc1/{kernel [D, M], bias [M]}
    encoderblock_{i}/mlp/fc2/{kernel [M, D], bias [D]}
    encoderblock_{i}/ls2/scale [D]            (LayerScale only)
    encoder_norm/{scale, bias} [D]
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

Dtype = Any


class LayerScale(nn.Module):
    """Per-channel residual scaling of CaiT / DINOv2: ``x * scale`` with scale float[D]."""

    init_value: float = 1e-5
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        scale = self.param(
            "scale", nn.initializers.constant(self.init_value), (x.shape[-1],), self.param_dtype
        )
        return x * scale.astype(x.dtype)


class MlpBlock(nn.Module):
    """``fc1`` (Dense mlp_dim) -> GELU (exact erf, or tanh if ``gelu_approximate``) -> ``fc2``."""

    mlp_dim: int
    gelu_approximate: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        width = x.shape[-1]
        dense = lambda n, name: nn.Dense(
            n, dtype=self.dtype, param_dtype=self.param_dtype, name=name,
            kernel_init=nn.initializers.xavier_uniform(), bias_init=nn.initializers.normal(1e-6),
        )
        x = nn.gelu(dense(self.mlp_dim, "fc1")(x), approximate=self.gelu_approximate)
        return dense(width, "fc2")(x)


class EncoderBlock(nn.Module):
    """Pre-LN transformer block: ``x + LS1(MHSA(LN1(x)))`` then ``x + LS2(MLP(LN2(x)))``."""

    num_heads: int
    mlp_dim: int
    layerscale: bool = False
    layernorm_epsilon: float = 1e-6
    gelu_approximate: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        norm = lambda name: nn.LayerNorm(
            epsilon=self.layernorm_epsilon, dtype=self.dtype, param_dtype=self.param_dtype,
            name=name,
        )
        y = norm("norm1")(x)
        y = nn.MultiHeadDotProductAttention(
            num_heads=self.num_heads, dtype=self.dtype, param_dtype=self.param_dtype,
            kernel_init=nn.initializers.xavier_uniform(), deterministic=True, name="attn",
        )(y, y)
        if self.layerscale:
            y = LayerScale(param_dtype=self.param_dtype, name="ls1")(y)
        x = x + y
        y = MlpBlock(self.mlp_dim, self.gelu_approximate, self.dtype, self.param_dtype,
                     name="mlp")(norm("norm2")(x))
        if self.layerscale:
            y = LayerScale(param_dtype=self.param_dtype, name="ls2")(y)
        return x + y


class ViT(nn.Module):
    """Vision Transformer returning the CLS feature after the final LayerNorm (timm ViT with
    ``num_classes=0``, the official code's backbone; docs/benchmarks.md).

    Attributes:
      width: token width D. depth: number of encoder blocks. num_heads: attention heads
      (D must be divisible by it). mlp_dim: hidden width M of the MLP. patch_size: p (pixels).
      image_size: input side in pixels (a multiple of p); fixes the position-embedding grid
      g = image_size // p. layerscale: add DINOv2/CaiT LayerScale after attention and MLP.
      layernorm_epsilon: LayerNorm eps (1e-6 for big_vision, timm and DINOv2).
      gelu_approximate: tanh GELU instead of the exact erf GELU.
      dtype: compute dtype (e.g. ``jnp.bfloat16``); param_dtype: parameter dtype (float32).
      remat: rematerialise each block in the backward pass (``nn.remat``) to save memory.

    Call: ``model.apply({"params": params}, images)`` with images float[N, H, W, 3] (NHWC,
    already preprocessed by the checkpoint's ``preprocess`` function) -> float32[N, D]; with
    ``return_tokens=True`` -> ``(cls float32[N, D], tokens float32[N, 1 + g*g, D])``.

    Raises:
      ValueError: if the image side is not ``image_size`` (the position embedding is fixed; reload
        the checkpoint with ``load_pretrained(..., image_size=...)`` to resample it).
    """

    width: int = 384
    depth: int = 12
    num_heads: int = 6
    mlp_dim: int = 1536
    patch_size: int = 16
    image_size: int = 224
    layerscale: bool = False
    layernorm_epsilon: float = 1e-6
    gelu_approximate: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    remat: bool = False

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @nn.compact
    def __call__(self, images, *, return_tokens: bool = False):
        if images.ndim != 4 or images.shape[1:3] != (self.image_size, self.image_size):
            raise ValueError(
                f"ViT expects images float[N, {self.image_size}, {self.image_size}, C] (NHWC), got "
                f"shape {images.shape}; resize the inputs or load the model with "
                f"image_size={images.shape[1] if images.ndim == 4 else '...'}."
            )
        p, d = self.patch_size, self.width
        x = nn.Conv(d, (p, p), strides=(p, p), padding="VALID", dtype=self.dtype,
                    param_dtype=self.param_dtype, name="patch_embed")(images.astype(self.dtype))
        n = x.shape[0]
        x = x.reshape(n, -1, d)
        cls = self.param("cls_token", nn.initializers.zeros, (1, 1, d), self.param_dtype)
        x = jnp.concatenate([jnp.broadcast_to(cls.astype(x.dtype), (n, 1, d)), x], axis=1)
        pos = self.param("pos_embed", nn.initializers.normal(0.02), (1, 1 + self.grid ** 2, d),
                         self.param_dtype)
        x = x + pos.astype(x.dtype)
        block = nn.remat(EncoderBlock) if self.remat else EncoderBlock
        for i in range(self.depth):
            x = block(self.num_heads, self.mlp_dim, self.layerscale, self.layernorm_epsilon,
                      self.gelu_approximate, self.dtype, self.param_dtype,
                      name=f"encoderblock_{i}")(x)
        x = nn.LayerNorm(epsilon=self.layernorm_epsilon, dtype=self.dtype,
                         param_dtype=self.param_dtype, name="encoder_norm")(x)
        x = x.astype(jnp.float32)
        return (x[:, 0], x) if return_tokens else x[:, 0]


def tiny_vit(image_size: int = 32, patch_size: int = 8, **kwargs) -> ViT:
    """A 2-block, width-32, 2-head ViT for tests and smoke runs (not pre-trained)."""
    cfg = dict(width=32, depth=2, num_heads=2, mlp_dim=64, patch_size=patch_size,
               image_size=image_size)
    cfg.update(kwargs)
    return ViT(**cfg)
