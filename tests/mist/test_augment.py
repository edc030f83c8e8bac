"""Two-view augmentation: shapes, determinism and the statistics of flip / grey / crop.

The test image encodes coordinates: R = column index, G = row index, B = 7. A bilinear
resample of a crop [top, top+ch) x [left, left+cw) to H x W is then affine in the output
coordinates: out_R[:, j] = left + (j + 0.5) * cw / W - 0.5 away from the borders (pixel centres
at +0.5), so slopes and intercepts recover the crop box, and a flip reverses the R slope.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mist_jax.mist import augment
from support.variants import VARIANTS


H = W = 32
N = 400


def coordinate_images(n=N, h=H, w=W):
    cols = np.broadcast_to(np.arange(w, dtype=np.float32)[None, :], (h, w))
    rows = np.broadcast_to(np.arange(h, dtype=np.float32)[:, None], (h, w))
    img = np.stack([cols, rows, np.full((h, w), 7.0, np.float32)], axis=-1)
    return np.broadcast_to(img, (n, h, w, 3)).copy()


@pytest.mark.parametrize("variant", VARIANTS)
def test_shapes_dtype_and_first_half(variant):
    x = jnp.asarray(coordinate_images(6)).astype(jnp.bfloat16)
    views = variant(augment.two_views)(jax.random.key(0), x)
    assert views.shape == (12, H, W, 3)
    assert views.dtype == jnp.bfloat16
    np.testing.assert_array_equal(views[:6], x)


def test_deterministic_per_key_and_same_with_jit():
    x = jnp.asarray(coordinate_images(8))
    a = augment.second_view(jax.random.key(3), x)
    b = jax.jit(augment.second_view)(jax.random.key(3), x)
    c = augment.second_view(jax.random.key(4), x)
    np.testing.assert_allclose(a, b, atol=1e-4)
    assert not np.allclose(a, c)


def test_flip_grey_crop_statistics():
    out = np.asarray(augment.second_view(jax.random.key(1), jnp.asarray(coordinate_images())))
    grey = np.all(np.abs(out[..., 0] - out[..., 1]) < 1e-4, axis=(1, 2))
    # Grey: all channels equal 0.299 R + 0.587 G + 0.114 B of the (cropped) image.
    # Binomial(400, 0.25): sd = 8.7, allow 4 sd.
    assert abs(grey.sum() - 0.25 * N) < 4 * np.sqrt(N * 0.25 * 0.75)
    colour = out[~grey]
    # Interior samples (2 px away from the borders) follow the affine map exactly.
    j = np.arange(2, W - 2)
    slope_x = np.array([np.polyfit(j, o[H // 2, 2:-2, 0], 1)[0] for o in colour])
    slope_y = np.array([np.polyfit(j, o[2:-2, W // 2, 1], 1)[0] for o in colour])
    flipped = slope_x < 0
    assert abs(flipped.mean() - 0.5) < 4 * np.sqrt(0.25 / len(colour))
    cw, ch = np.abs(slope_x) * W, slope_y * H  # crop size in input pixels
    # Integer crop sizes: scale in [0.3, 1] up to rounding, ratio in [3/4, 4/3] up to rounding.
    area = cw * ch / (H * W)
    assert np.all(area > 0.3 - 0.05) and np.all(area <= 1.0 + 1e-3), area.min()
    ratio = cw / ch
    assert np.all(ratio > 0.75 - 0.06) and np.all(ratio < 4 / 3 + 0.06)
    np.testing.assert_allclose(cw, np.round(cw), atol=1e-3)
    # Mean of U(0.3, 1) is 0.65; rejected trials of large areas lower it a little.
    assert 0.55 < area.mean() < 0.7, area.mean()
    # Crop boxes lie inside the image: recover left/top from the intercepts (unflipped).
    un = colour[~flipped]
    left = un[:, H // 2, 2, 0] - (2 + 0.5) * cw[~flipped] / W + 0.5
    top = un[:, 2, W // 2, 1] - (2 + 0.5) * ch[~flipped] / H + 0.5
    assert np.all(left > -1e-3) and np.all(left + cw[~flipped] < W + 1e-3)
    assert np.all(top > -1e-3) and np.all(top + ch[~flipped] < H + 1e-3)
    np.testing.assert_allclose(left, np.round(left), atol=1e-3)


def test_grey_values_are_luma():
    out = np.asarray(augment.second_view(jax.random.key(2), jnp.asarray(coordinate_images(64))))
    grey = np.all(np.abs(out[..., 0] - out[..., 1]) < 1e-4, axis=(1, 2))
    assert grey.sum() > 0
    # Luma of (x, y, 7) along a row/column is affine: 0.299 x + 0.587 y + 0.798; the centre
    # pixel of any crop lies inside the image so its value is within the luma range.
    lo, hi = 0.798, 0.299 * (W - 1) + 0.587 * (H - 1) + 0.798
    centre = out[grey][:, H // 2, W // 2, 0]
    assert np.all((centre >= lo - 1e-3) & (centre <= hi + 1e-3))


def test_grey_of_a_pure_colour_is_its_luma_weight():
    # Constant images (crops and flips keep them constant) of pure red, green and blue:
    # a grey view holds exactly 0.299, 0.587 or 0.114 in every channel; equal weights
    # would give 1/3, and a non-grey view keeps the pure colour.
    for c, weight in enumerate((0.299, 0.587, 0.114)):
        x = np.zeros((64, 8, 8, 3), np.float32)
        x[..., c] = 1.0
        out = np.asarray(augment.second_view(jax.random.key(c), jnp.asarray(x)))
        grey = np.all(np.abs(out - out[..., :1]) < 1e-6, axis=(1, 2, 3))
        assert grey.any() and not grey.all()
        np.testing.assert_allclose(out[grey], weight, atol=1e-6)
        np.testing.assert_allclose(out[~grey], np.broadcast_to(x[0], out[~grey].shape),
                                   atol=1e-6)


def test_single_channel_allowed():
    x = jnp.asarray(coordinate_images(4)[..., :1])
    assert augment.two_views(jax.random.key(0), x).shape == (8, H, W, 1)


@pytest.mark.parametrize('shape', [(4, 32, 32), (4, 32, 32, 2), (32, 32, 3)])
def test_bad_shapes_raise(shape):
    with pytest.raises(ValueError, match="NHWC"):
        augment.second_view(jax.random.key(0), jnp.zeros(shape))


if __name__ == "__main__":
    pytest.main([__file__])
