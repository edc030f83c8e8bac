"""Train / test transforms (data/transforms.py) and the seeded batch stream (data/batches.py)."""

import jax
import numpy as np
import pytest
from PIL import Image

from mist_jax.data.batches import host_batches, with_keys
from mist_jax.data.sources import ImageSet
from mist_jax.data.transforms import (
    IMAGENET_MEAN, IMAGENET_STD, EvalTransform, ResizeCropTransform, TrainTransform,
    get_transforms, random_resized_crop_params, scaled, test_transform, to_rgb,
    train_transform)


def _ramp(h, w, c=3, seed=0):
    return np.random.default_rng(seed).integers(0, 256, size=(h, w, c), dtype=np.uint8)


def test_to_rgb_shapes():
    grey = np.arange(6, dtype=np.uint8).reshape(2, 3)
    for image in (grey, grey[..., None]):
        out = to_rgb(image)
        assert out.shape == (2, 3, 3) and all(np.array_equal(out[..., k], grey) for k in range(3))
    rgba = _ramp(2, 3, 4)
    assert np.array_equal(to_rgb(rgba), rgba[..., :3])
    with pytest.raises(ValueError):
        to_rgb(np.zeros((2, 3, 2), np.uint8))


def test_eval_centre_crop_by_hand():
    # resize 8 on an 8 x 8 image keeps it; the centre 4 x 4 crop starts at row 2, column 2.
    image = _ramp(8, 8)
    out = EvalTransform(size=4, resize=8)([image])
    assert out.shape == (1, 4, 4, 3) and out.dtype == np.float32
    np.testing.assert_array_equal(out[0], image[2:6, 2:6].astype(np.float32) / 255.0)


def test_eval_resize_shorter_side_bicubic_then_centre_crop():
    image = _ramp(30, 20)  # H 30, W 20: the width is the shorter side
    out = test_transform(14)([image])  # resize int(256 / 224 * 14) = 16
    # torchvision Resize(16): W -> 16, H -> int(16 * 30 / 20) = 24; crop top round(5) = 5, left 1.
    ref = np.asarray(Image.fromarray(image).resize((16, 24), Image.BICUBIC))[5:19, 1:15]
    np.testing.assert_array_equal(out[0], ref.astype(np.float32) / 255.0)


def test_greyscale_inputs_become_three_equal_channels():
    out = test_transform(8)([_ramp(12, 12, 1)])
    assert out.shape == (1, 8, 8, 3)
    assert np.array_equal(out[..., 0], out[..., 1]) and np.array_equal(out[..., 0], out[..., 2])


def test_normalisation_is_optional():
    image = _ramp(8, 8)
    plain = EvalTransform(4, resize=8)([image])
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.5)
    norm = EvalTransform(4, resize=8, mean=mean, std=std)([image])
    np.testing.assert_allclose(norm, (plain - np.array(mean)) / np.array(std), rtol=1e-6,
                               atol=1e-6)
    assert 0.0 <= plain.min() and plain.max() <= 1.0


def test_crop_params_inside_image_and_within_bounds():
    rng = np.random.default_rng(0)
    for _ in range(200):
        top, left, h, w = random_resized_crop_params(40, 60, (0.05, 1.0), (3 / 4, 4 / 3), rng)
        assert 0 <= top and top + h <= 40 and 0 <= left and left + w <= 60
        assert 0.04 <= h * w / 2400 <= 1.0
        assert 0.7 <= w / h <= 1.4  # ratio (3/4, 4/3) up to rounding


def test_crop_params_fallback_is_centred():
    # An area fraction > 1 never fits: torchvision falls back to the centred crop with the
    # aspect ratio clamped to max 4/3: 40 x 100 -> h 40, w round(40 * 4 / 3) = 53.
    rng = np.random.default_rng(0)
    assert random_resized_crop_params(40, 100, (2.0, 3.0), (3 / 4, 4 / 3), rng) == (0, 23, 40, 53)


def test_full_crop_without_flip_is_a_plain_bilinear_resize():
    image = _ramp(20, 20)
    tr = TrainTransform(size=10, scale=(1.0, 1.0), ratio=(1.0, 1.0), flip=False)
    out = tr([image], np.random.default_rng(0))
    ref = np.asarray(Image.fromarray(image).resize((10, 10), Image.BILINEAR))
    np.testing.assert_array_equal(out[0], ref.astype(np.float32) / 255.0)
    flipped = TrainTransform(size=10, scale=(1.0, 1.0), ratio=(1.0, 1.0))(
        [image] * 16, np.random.default_rng(1))
    kinds = {0 if np.array_equal(o, out[0]) else 1 if np.array_equal(o, out[0][:, ::-1]) else 2
             for o in flipped}
    assert kinds == {0, 1}  # each is the resize or its mirror, both occur


def test_train_transform_deterministic_given_seed():
    images = [_ramp(32, 24, seed=s) for s in range(4)]
    tr = train_transform(16)
    a = tr(images, np.random.default_rng(5))
    assert a.shape == (4, 16, 16, 3) and a.dtype == np.float32
    np.testing.assert_array_equal(a, tr(images, np.random.default_rng(5)))
    assert not np.array_equal(a, tr(images, np.random.default_rng(6)))


def _image_set(n=10):
    images = np.stack([np.full((6, 6, 1), i, np.uint8) for i in range(n)])
    return ImageSet(images, np.arange(n, dtype=np.int64) % 3, 3, ("a", "b", "c"))


def _ids(batches):
    """Sample ids of a batch stream (pixel value = sample id)."""
    return np.concatenate([np.rint(x[:, 0, 0, 0] * 255).astype(int) for _, (x, _) in batches])


def test_host_batches_cover_indices_once_in_order():
    s = _image_set()
    idx = np.array([9, 2, 4, 7, 0, 5, 1])
    batches = list(host_batches(s, idx, s.labels[idx], 3, test_transform(4, resize=6)))
    assert [n for n, _ in batches] == [3, 3, 1]
    assert _ids(batches).tolist() == idx.tolist()
    labels = np.concatenate([y for _, (_, y) in batches])
    assert labels.dtype == np.int32 and labels.tolist() == (idx % 3).tolist()
    # A process holding the first two rows of each global batch gets just those.
    rows = list(host_batches(s, idx, s.labels[idx], 3, test_transform(4, resize=6),
                             local_rows=lambda n: slice(0, min(n, 2))))
    assert [n for n, _ in rows] == [3, 3, 1] and _ids(rows).tolist() == [9, 2, 7, 0, 1]


def test_host_batches_shuffle_is_a_seeded_permutation():
    s = _image_set()
    idx = np.arange(10)
    tr = train_transform(4)

    def ids(seed):
        return _ids(host_batches(s, idx, s.labels, 4, tr, (seed, 1), (seed, 2)))

    assert sorted(ids(0).tolist()) == list(range(10))
    want = np.random.default_rng((0, 1)).permutation(10)  # the documented order draw
    np.testing.assert_array_equal(ids(0), want)
    assert not np.array_equal(ids(0), ids(1))
    with pytest.raises(ValueError, match="both"):
        list(host_batches(s, idx, s.labels, 4, tr, (0, 1)))


def test_host_batches_from_a_start_batch_are_the_tail_of_the_full_pass():
    s = _image_set()
    idx, tr = np.arange(10), train_transform(4)
    full = list(host_batches(s, idx, s.labels, 3, tr, (5, 1), (5, 2)))
    tail = list(host_batches(s, idx, s.labels, 3, tr, (5, 1), (5, 2), start=2))
    assert len(full) == 4 and len(tail) == 2
    for (n1, (x1, y1)), (n2, (x2, y2)) in zip(full[2:], tail):
        assert n1 == n2
        np.testing.assert_array_equal(x1, x2)  # same images, same augmentation draws
        np.testing.assert_array_equal(y1, y2)
    keyed = list(with_keys(iter(tail), jax.random.key(3), start=2))
    for b, (_, out) in zip((2, 3), keyed):
        np.testing.assert_array_equal(jax.random.key_data(out[-1]),
                                      jax.random.key_data(jax.random.fold_in(jax.random.key(3), b)))


# --------------------------------------------------------------------------- Cars-196 pipeline
def _data_cfg(transform=None, size=32):
    from types import SimpleNamespace
    cfg = SimpleNamespace(image_size=size, train_crop_scale=(0.05, 1.0))
    if transform is not None:
        cfg.transform = transform
    return cfg


def _unnormalise(x):
    """Normalised float images -> the uint8 pixels they came from (ImageNet mean / std)."""
    return np.rint((x * np.array(IMAGENET_STD) + np.array(IMAGENET_MEAN)) * 255).astype(np.uint8)


def test_scaled_sizes_by_hand():
    # utils/data.py iCARS196_224 fixes 300 / 256 at 224 px; other sizes scale and round.
    assert (scaled(224, 300), scaled(224, 256)) == (300, 256)
    assert (scaled(112, 300), scaled(112, 256)) == (150, 128)
    assert (scaled(32, 300), scaled(32, 256)) == (43, 37)  # 42.86 -> 43, 36.57 -> 37


def test_get_transforms_picks_the_pipeline():
    tr, te = get_transforms(_data_cfg(None, 224))  # no field: the default pipeline
    assert tr == TrainTransform(224, scale=(0.05, 1.0)) and te == EvalTransform(224)
    assert get_transforms(_data_cfg("default", 224)) == (tr, te)
    tr, te = get_transforms(_data_cfg("cars", 224))
    assert tr == ResizeCropTransform(224, 300, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    assert te == EvalTransform(224, 256, mean=IMAGENET_MEAN, std=IMAGENET_STD)
    with pytest.raises(ValueError, match=r"'default', 'cars'"):
        get_transforms(_data_cfg("imagenet"))


def test_cars_normalisation_values_by_hand():
    # A constant image stays constant through the bicubic resize and the crop; then
    # (v / 255 - mean) / std per channel: (128, 64, 255) -> (0.07406, -0.91527, 2.64000).
    image = np.empty((50, 70, 3), np.uint8)
    image[...] = (128, 64, 255)
    tr, te = get_transforms(_data_cfg("cars"))
    want = np.array([0.074062, -0.915266, 2.640000], np.float32)
    for out in (tr([image], np.random.default_rng(0)), te([image])):
        assert out.shape == (1, 32, 32, 3) and out.dtype == np.float32
        np.testing.assert_allclose(out[0], np.broadcast_to(want, (32, 32, 3)), atol=2e-5)


def test_cars_train_crop_is_a_window_of_the_300_resize():
    # size 32: Resize((43, 43), bicubic), then a 32 x 32 window at offsets in [0, 11], maybe
    # mirrored. Each output must equal one such window of an independently resized image.
    image = _ramp(57, 41)
    ref = np.asarray(Image.fromarray(image).resize((43, 43), Image.BICUBIC))
    windows = {(t, l, f): (ref[t:t + 32, l:l + 32][:, ::-1] if f else ref[t:t + 32, l:l + 32])
               for t in range(12) for l in range(12) for f in (0, 1)}
    tr, _ = get_transforms(_data_cfg("cars"))
    seen = set()
    for seed in range(60):
        pixels = _unnormalise(tr([image], np.random.default_rng(seed))[0])
        hits = [k for k, w in windows.items() if np.array_equal(pixels, w)]
        assert hits, f"seed {seed}: not a window of the 43 x 43 bicubic resize"
        seen.update(hits)
    assert {f for _, _, f in seen} == {0, 1}  # both flip states occur
    assert len({(t, l) for t, l, _ in seen}) > 20  # offsets vary


def test_cars_test_transform_centre_box_by_hand():
    # size 32: Resize(37) on H 40 x W 60 -> H 37, W int(37 * 60 / 40) = 55 (bicubic);
    # centre crop top round(2.5) = 2, left round(11.5) = 12.
    image = _ramp(40, 60)
    _, te = get_transforms(_data_cfg("cars"))
    ref = np.asarray(Image.fromarray(image).resize((55, 37), Image.BICUBIC))[2:34, 12:44]
    np.testing.assert_array_equal(_unnormalise(te([image])[0]), ref)


def test_resize_crop_rejects_a_crop_larger_than_the_resize():
    with pytest.raises(ValueError, match="smaller than the crop size"):
        ResizeCropTransform(32, 30)([_ramp(8, 8)], np.random.default_rng(0))
