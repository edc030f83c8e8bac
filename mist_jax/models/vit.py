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

Extension points (``models/extensions.py``): learners pass their own parameters at call time,
``model.apply({"params": params}, images, ext=Extensions(...), tokens="cls")``, so the tree
above never changes. ``prompts`` are inserted after the CLS token once the position embedding
is added (L2P, VPT), ``deep_prompts[i]`` are appended before block i and dropped after it
(VPT-deep), ``prefix`` keys / values are prepended to a block's projected keys / values
(DualPrompt, CODA-Prompt), ``adapters`` add a bottleneck branch to a block's MLP (AdaptFormer,
APER, EASE) and ``ssf`` scales and shifts named sites (SSF). Without ``ext`` the forward is
op for op the plain ViT's (bitwise); ``tokens`` picks CLS, prompt, patch or all output tokens.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from mist_jax.models.extensions import (
    Extensions, block_ssf, bottleneck, prefix_heads, scale_shift, validate)

Dtype = Any
#: Output names accepted by ``ViT(...)(images, tokens=...)``.
TOKENS = ("cls", "prompts", "patches", "all")


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
    """``fc1`` (Dense mlp_dim) -> GELU (exact erf, or tanh if ``gelu_approximate``) -> ``fc2``,
    with optional SSF after ``fc1`` (before the GELU) and after ``fc2`` (``ssf`` keys ``fc1``,
    ``fc2``), as the SSF reference code places them."""

    mlp_dim: int
    gelu_approximate: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, ssf=None):
        ssf = ssf or {}
        width = x.shape[-1]
        dense = lambda n, name: nn.Dense(
            n, dtype=self.dtype, param_dtype=self.param_dtype, name=name,
            kernel_init=nn.initializers.xavier_uniform(), bias_init=nn.initializers.normal(1e-6),
        )
        x = scale_shift(dense(self.mlp_dim, "fc1")(x), ssf.get("fc1"))
        x = nn.gelu(x, approximate=self.gelu_approximate)
        return scale_shift(dense(width, "fc2")(x), ssf.get("fc2"))


class Attention(nn.Module):
    """Multi-head self-attention doing exactly what ``nn.MultiHeadDotProductAttention`` does for
    self-attention without dropout (the same ``query``/``key``/``value``/``out`` DenseGeneral
    submodules and parameter tree, the same ops in the same order, so bitwise the same output),
    plus prefix tuning: prefix keys and values (``prefix_heads``) are prepended to the projected
    keys and values before the softmax, as DualPrompt's ``k = torch.cat((pk, k))``.

    Call: ``(x float[N, L, D], prefix=None | (key, value), qkv_ssf=None | {"scale", "shift"}
    float[3, D]) -> float[N, L, D]`` in ``dtype``; ``qkv_ssf`` rescales q, k and v (SSF).
    """

    num_heads: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x, prefix=None, qkv_ssf=None):
        n, d, heads = x.shape[0], x.shape[-1], self.num_heads
        dense = functools.partial(
            nn.DenseGeneral, axis=-1, features=(heads, d // heads), dtype=self.dtype,
            param_dtype=self.param_dtype, kernel_init=nn.initializers.xavier_uniform(),
        )
        q, k, v = dense(name="query")(x), dense(name="key")(x), dense(name="value")(x)
        if qkv_ssf is not None:
            scale, shift = (qkv_ssf[s].reshape(3, heads, -1) for s in ("scale", "shift"))
            q, k, v = (scale_shift(t, {"scale": scale[j], "shift": shift[j]})
                       for j, t in enumerate((q, k, v)))
        if prefix is not None:
            pk, pv = (prefix_heads(t, n, heads, k.dtype) for t in prefix)
            k, v = jnp.concatenate([pk, k], axis=1), jnp.concatenate([pv, v], axis=1)
        y = nn.dot_product_attention(q, k, v, deterministic=True, dtype=self.dtype)
        return nn.DenseGeneral(d, axis=(-2, -1), dtype=self.dtype, param_dtype=self.param_dtype,
                               kernel_init=nn.initializers.xavier_uniform(), name="out")(y)


class EncoderBlock(nn.Module):
    """Pre-LN transformer block: ``x + LS1(MHSA(LN1(x)))`` then ``x + LS2(MLP(LN2(x)))``.

    Call: ``(x float[N, L, D], prefix, adapter, ssf) -> float[N, L, D]`` with this block's
    prefix ``(key, value)``, adapter ``{"down", "up"}`` and SSF ``{site: {"scale", "shift"}}``
    (``extensions.BLOCK_SITES``), each optional, and ``dropout_key`` for the adapter's dropout
    at rate ``adapter_dropout`` (training only; None: none). The adapter branch ``A = up(ReLU(down(.)))``
    joins the MLP branch after LS2, scaled by ``adapter_scale`` (s): ``"parallel"`` adds
    ``s * A(LN2(x))`` (AdaptFormer, Chen et al. 2022), ``"parallel_residual"`` adds
    ``s * A(x)`` (the APER / EASE code: AdaptFormer's adapter without its LayerNorm),
    ``"sequential"`` maps the branch y to ``y + s * A(y)`` (Houlsby et al. 2019).
    """

    num_heads: int
    mlp_dim: int
    layerscale: bool = False
    layernorm_epsilon: float = 1e-6
    gelu_approximate: bool = False
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    adapter_mode: str = "parallel"
    adapter_scale: float = 1.0
    adapter_dropout: float = 0.0

    @nn.compact
    def __call__(self, x, prefix=None, adapter=None, ssf=None, dropout_key=None):
        ssf = ssf or {}
        norm = lambda name, t: scale_shift(nn.LayerNorm(
            epsilon=self.layernorm_epsilon, dtype=self.dtype, param_dtype=self.param_dtype,
            name=name,
        )(t), ssf.get(name))
        y = Attention(self.num_heads, self.dtype, self.param_dtype, name="attn")(
            norm("norm1", x), prefix, ssf.get("qkv"))
        y = scale_shift(y, ssf.get("attn"))
        if self.layerscale:
            y = LayerScale(param_dtype=self.param_dtype, name="ls1")(y)
        x = x + y
        h = norm("norm2", x)
        y = MlpBlock(self.mlp_dim, self.gelu_approximate, self.dtype, self.param_dtype,
                     name="mlp")(h, ssf)
        if self.layerscale:
            y = LayerScale(param_dtype=self.param_dtype, name="ls2")(y)
        if adapter is not None:
            source = {"parallel": h, "parallel_residual": x, "sequential": y}[self.adapter_mode]
            dropout = None if dropout_key is None else (self.adapter_dropout, dropout_key)
            y = y + self.adapter_scale * bottleneck(source, adapter, dropout)
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

    Call: ``model.apply({"params": params}, images, ext=None, tokens="cls",
    return_tokens=False)`` with images float[N, H, W, 3] (NHWC, already preprocessed by the
    checkpoint's ``preprocess`` function) and ``ext`` an optional ``Extensions`` (P prompts).
    ``tokens`` picks the float32 output after the final LayerNorm: ``"cls"`` [N, D],
    ``"prompts"`` [N, P, D], ``"patches"`` [N, g*g, D], ``"all"`` [N, 1 + P + g*g, D], or a
    tuple of these names for a tuple of outputs; ``return_tokens=True`` is
    ``tokens=("cls", "all")``.

    Raises:
      ValueError: if the image side is not ``image_size`` (the position embedding is fixed; reload
        the checkpoint with ``load_pretrained(..., image_size=...)`` to resample it); on an
        unknown ``tokens`` name, ``"prompts"`` without prompts, ``return_tokens`` with
        ``tokens``, prompts whose batch is neither 1 nor N, or ``ext`` not fitting the model
        (``extensions.validate``).
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
    def __call__(self, images, *, ext: Extensions | None = None, tokens="cls",
                 return_tokens: bool = False):
        if images.ndim != 4 or images.shape[1:3] != (self.image_size, self.image_size):
            raise ValueError(
                f"ViT expects images float[N, {self.image_size}, {self.image_size}, C] (NHWC), got "
                f"shape {images.shape}; resize the inputs or load the model with "
                f"image_size={images.shape[1] if images.ndim == 4 else '...'}."
            )
        ext = Extensions() if ext is None else ext
        validate(ext, self)
        names = _token_names(tokens, return_tokens, ext.prompts is not None)
        p, d = self.patch_size, self.width
        ssf = ext.ssf or {}
        x = nn.Conv(d, (p, p), strides=(p, p), padding="VALID", dtype=self.dtype,
                    param_dtype=self.param_dtype, name="patch_embed")(images.astype(self.dtype))
        n = x.shape[0]
        x = scale_shift(x.reshape(n, -1, d), ssf.get("patch_embed"))
        cls = self.param("cls_token", nn.initializers.zeros, (1, 1, d), self.param_dtype)
        x = jnp.concatenate([jnp.broadcast_to(cls.astype(x.dtype), (n, 1, d)), x], axis=1)
        pos = self.param("pos_embed", nn.initializers.normal(0.02), (1, 1 + self.grid ** 2, d),
                         self.param_dtype)
        x = x + pos.astype(x.dtype)
        n_prompts = 0
        if ext.prompts is not None:
            prompts = ext.prompts if ext.prompts.ndim == 3 else ext.prompts[None]
            if prompts.shape[0] not in (1, n):
                raise ValueError(f"prompts {ext.prompts.shape} do not fit a batch of {n}")
            n_prompts = prompts.shape[1]
            prompts = jnp.broadcast_to(prompts.astype(x.dtype), (n,) + prompts.shape[1:])
            x = jnp.concatenate([x[:, :1], prompts, x[:, 1:]], axis=1)
        block = nn.remat(EncoderBlock) if self.remat else EncoderBlock
        for i in range(self.depth):
            if ext.deep_prompts is not None:  # VPT-deep: block i's own tokens, at the end
                deep = ext.deep_prompts[i].astype(x.dtype)
                x = jnp.concatenate([x, jnp.broadcast_to(deep, (n,) + deep.shape)], axis=1)
            x = block(self.num_heads, self.mlp_dim, self.layerscale, self.layernorm_epsilon,
                      self.gelu_approximate, self.dtype, self.param_dtype, ext.adapter_mode,
                      ext.adapter_scale, ext.adapter_dropout, name=f"encoderblock_{i}")(
                x, (ext.prefix or {}).get(i), (ext.adapters or {}).get(i), block_ssf(ext, i),
                None if ext.dropout_key is None else jax.random.fold_in(ext.dropout_key, i))
            if ext.deep_prompts is not None:
                x = x[:, :x.shape[1] - ext.deep_prompts.shape[1]]
        x = nn.LayerNorm(epsilon=self.layernorm_epsilon, dtype=self.dtype,
                         param_dtype=self.param_dtype, name="encoder_norm")(x)
        x = scale_shift(x, ssf.get("encoder_norm")).astype(jnp.float32)
        out = {"cls": x[:, 0], "prompts": x[:, 1:1 + n_prompts], "patches": x[:, 1 + n_prompts:],
               "all": x}
        return out[names] if isinstance(names, str) else tuple(out[t] for t in names)


def _token_names(tokens, return_tokens: bool, has_prompts: bool):
    """``tokens`` checked (``ViT`` Raises), with ``return_tokens=True`` as ``("cls", "all")``."""
    if return_tokens:
        if tokens != "cls":
            raise ValueError("pass either return_tokens=True or tokens=..., not both")
        tokens = ("cls", "all")
    for t in (tokens,) if isinstance(tokens, str) else tokens:
        if t not in TOKENS:
            raise ValueError(f"tokens must be among {TOKENS}, got {t!r}")
        if t == "prompts" and not has_prompts:
            raise ValueError('tokens="prompts" needs ext=Extensions(prompts=...)')
    return tokens


def tiny_vit(image_size: int = 32, patch_size: int = 8, **kwargs) -> ViT:
    """A 2-block, width-32, 2-head ViT for tests and smoke runs (not pre-trained)."""
    cfg = dict(width=32, depth=2, num_heads=2, mlp_dim=64, patch_size=patch_size,
               image_size=image_size)
    cfg.update(kwargs)
    return ViT(**cfg)
