"""Second-view augmentation for MIST's two-view MI objective, in JAX (jit-able, batched, keyed).

Source: docs/algorithm.md §3; code models/simplecil_mist.py
(`simclr_aug = Sequential(HorizontalFlipLayer(), RandomColorGrayLayer(p=0.25),
RandomResizedCropLayer(scale=(0.3, 1.0)))`) and utils/tao.py (grey = 0.299 R + 0.587 G +
0.114 B; crop size sampled in up to 10 trials, falling back to the whole image).

Images are float[N, H, W, C] with C = 3 (RGB) or 1 (grayscale is then a no-op); values are
whatever range the caller uses (the transforms are affine in the pixel values). Computation is
in float32 and the result has the input dtype.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

FLIP_PROB = 0.5
GRAY_PROB = 0.25
CROP_SCALE = (0.3, 1.0)
CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)
_CROP_TRIALS = 10
_LUMA = (0.299, 0.587, 0.114)


def _check_images(images: jax.Array) -> None:
    if images.ndim != 4 or images.shape[-1] not in (1, 3):
        raise ValueError(
            f"images must be float[N, H, W, C] with C in (1, 3) (NHWC), got shape {images.shape}."
        )


def _sample_crops(key: jax.Array, n: int, h: int, w: int) -> tuple[jax.Array, ...]:
    """Per-image crop boxes (top, left, height, width) in pixels, float32[N] each.

    torchvision's RandomResizedCrop sampling: area ~ U(scale) * H * W, log-aspect ~ U(log ratio),
    integer sizes rounded; the first of 10 trials that fits is used, else the whole image (code
    utils/tao.py `_sample_latent`); the integer offset is uniform over the valid range.
    """
    k_area, k_ratio, k_top, k_left = jax.random.split(key, 4)
    shape = (n, _CROP_TRIALS)
    area = jax.random.uniform(k_area, shape, minval=CROP_SCALE[0], maxval=CROP_SCALE[1]) * (h * w)
    log_r = jax.random.uniform(
        k_ratio, shape, minval=math.log(CROP_RATIO[0]), maxval=math.log(CROP_RATIO[1])
    )
    cw = jnp.round(jnp.sqrt(area * jnp.exp(log_r)))
    ch = jnp.round(jnp.sqrt(area / jnp.exp(log_r)))
    ok = (cw > 0) & (cw <= w) & (ch > 0) & (ch <= h)
    first = jnp.argmax(ok, axis=1)
    found = jnp.any(ok, axis=1)
    cw = jnp.where(found, jnp.take_along_axis(cw, first[:, None], axis=1)[:, 0], float(w))
    ch = jnp.where(found, jnp.take_along_axis(ch, first[:, None], axis=1)[:, 0], float(h))
    # Integer offsets uniform in [0, H - ch] and [0, W - cw].
    top = jnp.floor(jax.random.uniform(k_top, (n,)) * (h - ch + 1.0))
    left = jnp.floor(jax.random.uniform(k_left, (n,)) * (w - cw + 1.0))
    return top, left, ch, cw


def _resize_crop(image: jax.Array, top, left, ch, cw) -> jax.Array:
    """Bilinear resample of the crop [top, top+ch) x [left, left+cw) of one HWC image to HxW."""
    h, w = image.shape[0], image.shape[1]
    scale = jnp.stack([h / ch, w / cw])
    translation = -jnp.stack([top, left]) * scale
    # Crops are never larger than the image, so this only upsamples: antialiasing is a no-op.
    return jax.image.scale_and_translate(
        image, image.shape, (0, 1), scale, translation, method="linear", antialias=False
    )


def second_view(key: jax.Array, images: jax.Array) -> jax.Array:
    """The extra augmentation x2 of x1 (docs/algorithm.md §3), independently per image.

    Horizontal flip (p = 0.5), grayscale (p = 0.25, luma 0.299/0.587/0.114 copied to all
    channels), then a random resized crop (scale (0.3, 1.0), ratio (3/4, 4/3)) bilinearly
    resampled back to H x W.

    Args:
      key: PRNG key.
      images: float[N, H, W, C], C in (1, 3).

    Returns:
      float[N, H, W, C] with the dtype of `images`.

    Raises:
      ValueError: images is not NHWC with 1 or 3 channels.
    """
    _check_images(images)
    n, h, w, c = images.shape
    k_flip, k_gray, k_crop = jax.random.split(key, 3)
    x = images.astype(jnp.float32)
    flip = jax.random.bernoulli(k_flip, FLIP_PROB, (n, 1, 1, 1))
    x = jnp.where(flip, x[:, :, ::-1, :], x)
    if c == 3:
        luma = jnp.einsum("nhwc,c->nhw", x, jnp.asarray(_LUMA, jnp.float32))[..., None]
        gray = jax.random.bernoulli(k_gray, GRAY_PROB, (n, 1, 1, 1))
        x = jnp.where(gray, jnp.broadcast_to(luma, x.shape), x)
    top, left, ch, cw = _sample_crops(k_crop, n, h, w)
    x = jax.vmap(_resize_crop)(x, top, left, ch, cw)
    return x.astype(images.dtype)


def two_views(key: jax.Array, images: jax.Array) -> jax.Array:
    """[x; second_view(x)]: the 2N views MIST's objective expects (rows i and i + N pair up).

    Args:
      key: PRNG key.
      images: float[N, H, W, C], C in (1, 3).

    Returns:
      float[2N, H, W, C] with the dtype of `images`.

    Raises:
      ValueError: images is not NHWC with 1 or 3 channels.
    """
    return jnp.concatenate([images, second_view(key, images)], axis=0)
