"""Learner-owned extensions of the ViT forward: prompts, prefixes, adapters and SSF.

Continual-learning learners (L2P, DualPrompt, CODA-Prompt, APER / EASE adapters, SSF) train a
few parameters of their own around a backbone they keep frozen. ``Extensions`` carries those
parameters into ``ViT.__call__`` as a pytree of plain arrays, separate from the backbone's
``params``: the backbone tree never changes, and ``jax.grad`` with respect to an ``Extensions``
gives gradients for the learner's parameters only. ``D`` is the width, ``H`` the heads,
``hd = D // H``, ``M`` the MLP width, ``N`` the batch and ``i`` a 0-based block index::

    prompts   float[P, D] | float[N, P, D]             tokens after CLS (L2P / VPT-shallow)
    deep_prompts float[L, P, D]                        per-block tokens (VPT-deep): appended
              before block i, dropped after it
    prefix    {i: (key, value)}, each float[Lp, D] | float[B, Lp, D] | float[B, Lp, H, hd],
              B in {1, N}                              attention prefix (DualPrompt / CODA)
    adapters  {i: {"down": {"kernel" [D, r], "bias" [r]},
                   "up":   {"kernel" [r, D], "bias" [D]}}}  bottleneck adapters (AdaptFormer)
    ssf       {site: {"scale", "shift"}}               per-channel scale and shift (SSF)

SSF sites (``ssf_sites``; each shaped like the channels of the output it rescales):
``patch_embed`` [D], ``encoderblock_{i}/{norm1, qkv [3, D], attn, norm2, fc1 [M], fc2}`` [D]
and ``encoder_norm`` [D]. The ``init_*`` helpers build each field for a given model.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import struct

Array = Any

#: SSF sites inside each encoder block, in forward order.
BLOCK_SITES = ("norm1", "qkv", "attn", "norm2", "fc1", "fc2")
#: Adapter placements (see ``bottleneck``).
ADAPTER_MODES = ("parallel", "parallel_residual", "sequential")


@struct.dataclass
class Extensions:
    """Learner parameters applied inside the ViT forward (module docstring for the shapes).

    Every array field is optional (``None``: that extension is off). ``adapter_mode`` (one of
    ``ADAPTER_MODES``), ``adapter_scale`` (the ``s`` of the adapter branch) and
    ``adapter_dropout`` (the rate of dropout after the adapter's ReLU) are static metadata, not
    pytree leaves, so they never receive gradients. ``dropout_key`` (a PRNG key; None: no
    dropout, as at test time) draws that dropout, folded with the block index.
    """

    prompts: Array | None = None
    deep_prompts: Array | None = None
    prefix: dict | None = None
    adapters: dict | None = None
    ssf: dict | None = None
    adapter_mode: str = struct.field(pytree_node=False, default="parallel")
    adapter_scale: float = struct.field(pytree_node=False, default=1.0)
    adapter_dropout: float = struct.field(pytree_node=False, default=0.0)
    dropout_key: Array | None = None


def ssf_sites(model) -> tuple[str, ...]:
    """All SSF site names of ``model`` (a ``ViT``), in forward order."""
    blocks = tuple(f"encoderblock_{i}/{s}" for i in range(model.depth) for s in BLOCK_SITES)
    return ("patch_embed",) + blocks + ("encoder_norm",)


def _site_shape(model, site: str) -> tuple[int, ...]:
    leaf = site.rsplit("/", 1)[-1]
    return {"qkv": (3, model.width), "fc1": (model.mlp_dim,)}.get(leaf, (model.width,))


def validate(ext: Extensions, model) -> None:
    """Check ``ext`` against ``model``'s width, depth and MLP width.

    Raises:
      ValueError: on a prompt array that is not float[P, D] / float[N, P, D]; a prefix or adapter
        on a block index outside ``range(depth)``; prefix keys and values of different shapes;
        an unknown SSF site or an SSF scale / shift not shaped like its site; an adapter whose
        kernels are not [D, r] and [r, D]; or an unknown ``adapter_mode``.
    """
    d = model.width
    if ext.prompts is not None and (ext.prompts.ndim not in (2, 3) or ext.prompts.shape[-1] != d):
        raise ValueError(f"prompts must be float[P, {d}] or float[N, P, {d}], got "
                         f"{ext.prompts.shape}")
    dp = ext.deep_prompts
    if dp is not None and (dp.ndim != 3 or dp.shape[0] != model.depth or dp.shape[-1] != d):
        raise ValueError(f"deep_prompts must be float[{model.depth}, P, {d}] (one set per "
                         f"block), got {dp.shape}")
    for name in ("prefix", "adapters"):
        bad = sorted(set(getattr(ext, name) or {}) - set(range(model.depth)))
        if bad:
            raise ValueError(f"{name} on blocks {bad}; the model has blocks 0..{model.depth - 1}")
    for i, (k, v) in (ext.prefix or {}).items():
        if k.shape != v.shape or k.ndim not in (2, 3, 4):
            raise ValueError(f"prefix {i}: key {k.shape} and value {v.shape} must share one "
                             f"shape [Lp, D], [B, Lp, D] or [B, Lp, H, hd]")
    for i, a in (ext.adapters or {}).items():
        r = a["down"]["kernel"].shape[-1]
        if a["down"]["kernel"].shape != (d, r) or a["up"]["kernel"].shape != (r, d):
            raise ValueError(f"adapter {i}: kernels must be [{d}, r] and [r, {d}], got "
                             f"{a['down']['kernel'].shape} and {a['up']['kernel'].shape}")
    if ext.adapters and ext.adapter_mode not in ADAPTER_MODES:
        raise ValueError(f"adapter_mode must be one of {ADAPTER_MODES}, got {ext.adapter_mode!r}")
    sites = set(ssf_sites(model))
    for site, p in (ext.ssf or {}).items():
        if site not in sites:
            raise ValueError(f"unknown SSF site {site!r}; sites are {sorted(sites)}")
        want = _site_shape(model, site)
        if p["scale"].shape != want or p["shift"].shape != want:
            raise ValueError(f"SSF {site}: scale {p['scale'].shape} and shift "
                             f"{p['shift'].shape} must both be {want}")


def block_ssf(ext: Extensions, i: int) -> dict:
    """The SSF entries of block ``i`` keyed by their site within the block (``norm1`` ...)."""
    head = f"encoderblock_{i}/"
    return {s[len(head):]: p for s, p in (ext.ssf or {}).items() if s.startswith(head)}


def scale_shift(y: Array, p: dict | None) -> Array:
    """SSF (Lian et al. 2022, "Scaling & Shifting Your Features"): ``y * scale + shift`` over
    the trailing axes of ``y`` (``scale``/``shift`` float[C] or float[3, D] for ``qkv``), in
    ``y``'s dtype; ``y`` unchanged for ``p=None``."""
    if p is None:
        return y
    return y * p["scale"].astype(y.dtype) + p["shift"].astype(y.dtype)


def bottleneck(h: Array, p: dict, dropout: tuple[float, Array] | None = None) -> Array:
    """Adapter branch of AdaptFormer (Chen et al. 2022) and APER / EASE:
    ``up(dropout(ReLU(down(h))))`` with float[..., D] -> float[..., D] in ``h``'s dtype.
    ``dropout = (rate, key)``: inverted dropout of the bottleneck activations (each kept with
    probability 1 - rate and scaled by 1 / (1 - rate), torch ``F.dropout`` in training, as the
    reference ``Adapter``); None: none (test time)."""
    dt = h.dtype
    h = jax.nn.relu(h @ p["down"]["kernel"].astype(dt) + p["down"]["bias"].astype(dt))
    if dropout is not None and dropout[0] > 0:
        rate, key = dropout
        keep = jax.random.bernoulli(key, 1.0 - rate, h.shape)
        h = jnp.where(keep, h / (1.0 - rate), 0).astype(dt)
    return h @ p["up"]["kernel"].astype(dt) + p["up"]["bias"].astype(dt)


def check_dropout(key: str, rate: float) -> None:
    """Raises ValueError naming the config ``key`` unless the adapter dropout ``rate`` is in
    [0, 1) (the references' ``Adapter(dropout=0.1)``)."""
    if not 0 <= rate < 1:
        raise ValueError(f"{key} must be in [0, 1) (the reference's 0.1), got {rate}.")


def prefix_heads(t: Array, n: int, heads: int, dtype) -> Array:
    """A prefix key or value float[Lp, D] / [B, Lp, D] / [B, Lp, H, hd] as float[N, Lp, H, hd]
    in ``dtype`` (``B`` of 1 broadcast to ``n``), the layout of DualPrompt's head-split
    ``(key_prefix, value_prefix)`` concatenated to the projected keys and values.

    Raises:
      ValueError: if ``B`` is neither 1 nor ``n``, or the last axes do not split into ``heads``.
    """
    t = t[None] if t.ndim == 2 else t
    if t.ndim == 3:
        if t.shape[-1] % heads:
            raise ValueError(f"prefix width {t.shape[-1]} is not divisible by {heads} heads")
        t = t.reshape(t.shape[:2] + (heads, t.shape[-1] // heads))
    if t.shape[0] not in (1, n) or t.shape[2] != heads:
        raise ValueError(f"prefix of shape {t.shape} does not fit batch {n} and {heads} heads")
    return jnp.broadcast_to(t.astype(dtype), (n,) + t.shape[1:])


def init_prompts(key, model, length: int, pool: int | None = None, bound: float = 1.0) -> Array:
    """Prompt tokens float32[length, D] (or a pool float32[pool, length, D] to select from),
    uniform in [-bound, bound] as the L2P and DualPrompt reference code initialise them."""
    shape = (length, model.width) if pool is None else (pool, length, model.width)
    return jax.random.uniform(key, shape, jnp.float32, -bound, bound)


def init_prefix(key, model, length: int, layers, pool: int | None = None,
                bound: float = 1.0) -> dict:
    """Prefix keys and values ``{i: (key, value)}`` for the blocks in ``layers``, each
    float32[length, D] (or float32[pool, length, D]), uniform in [-bound, bound] as DualPrompt
    initialises its prefix prompts."""
    keys = jax.random.split(key, (len(layers), 2))
    return {i: tuple(init_prompts(k, model, length, pool, bound) for k in ks)
            for i, ks in zip(layers, keys)}


def init_adapters(key, model, bottleneck_dim: int, layers=None) -> dict:
    """Bottleneck adapters for the blocks in ``layers`` (default: all), initialised as the
    AdaptFormer / APER code does: ``down`` kernel float32[D, r] uniform in
    ±1/sqrt(D) (PyTorch's kaiming_uniform with a=sqrt(5)), ``up`` kernel float32[r, D] and both
    biases zero, so the adapter branch starts at exactly zero."""
    layers = range(model.depth) if layers is None else layers
    d, r, lim = model.width, bottleneck_dim, model.width ** -0.5
    keys = jax.random.split(key, len(layers))
    return {i: {"down": {"kernel": jax.random.uniform(k, (d, r), jnp.float32, -lim, lim),
                         "bias": jnp.zeros((r,), jnp.float32)},
                "up": {"kernel": jnp.zeros((r, d), jnp.float32),
                       "bias": jnp.zeros((d,), jnp.float32)}}
            for i, k in zip(layers, keys)}


def init_ssf(model, sites=None, key=None, std: float = 0.02) -> dict:
    """SSF scales and shifts at ``sites`` (default: all ``ssf_sites(model)``): the identity
    (scale 1, shift 0) without ``key``; with ``key``, scale ~ N(1, std) and shift ~ N(0, std)
    as the SSF reference code initialises them."""
    sites = ssf_sites(model) if sites is None else tuple(sites)
    out = {}
    for j, site in enumerate(sites):
        shape = _site_shape(model, site)
        if key is None:
            out[site] = {"scale": jnp.ones(shape, jnp.float32),
                         "shift": jnp.zeros(shape, jnp.float32)}
        else:
            ks, kb = jax.random.split(jax.random.fold_in(key, j))
            out[site] = {"scale": 1.0 + std * jax.random.normal(ks, shape, jnp.float32),
                         "shift": std * jax.random.normal(kb, shape, jnp.float32)}
    return out
