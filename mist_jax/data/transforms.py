"""Image transforms of the authors' code and a seeded batch iterator (numpy + PIL, host side).

Two pipelines, picked by ``config.data.transform`` through ``get_transforms`` (official code
``utils/data.py``; docs/benchmarks.md):

* ``"default"`` (``build_transform``, used by CIFAR-100, ImageNet-R/A, CUB):
  train RandomResizedCrop(size, scale=(0.05, 1), ratio=(3/4, 4/3), bilinear) + horizontal
  flip (p 0.5); test Resize(int(256 / 224 * size), bicubic, shorter side) + CenterCrop(size);
  pixels float32 in [0, 1], no normalisation.
* ``"cars"`` (class ``iCARS196_224``): train Resize((300, 300), bicubic) + RandomCrop(224) +
  horizontal flip (p 0.5); test Resize(256, bicubic, shorter side) + CenterCrop(224); both
  then ToTensor + Normalize(ImageNet mean / std). Sizes scale with ``size``: resize
  round(size * 300 / 224) and round(size * 256 / 224). The normalisation happens here, on the
  data side, as in the official code, so MIST's second view (mist_jax/mist/augment.py) sees the
  normalised images; pair it with ``model.preprocess = "none"``.

Crop sampling, rounding and interpolation follow torchvision's PIL backend. Greyscale and
RGBA inputs become RGB. Everything is deterministic given a ``np.random.Generator``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def to_rgb(image: np.ndarray) -> np.ndarray:
    """uint8 [H, W], [H, W, 1], [H, W, 3] or [H, W, 4] -> uint8 [H, W, 3].

    Grey is replicated to three channels; an alpha channel is dropped.

    Raises:
      ValueError: any other shape.
    """
    image = np.asarray(image, np.uint8)
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[-1] not in (1, 3, 4):
        raise ValueError(f"Expected an HW, HW1, HW3 or HW4 image, got shape {image.shape}.")
    if image.shape[-1] == 1:
        return np.repeat(image, 3, axis=-1)
    return image[..., :3]


def _finish(pixels: np.ndarray, mean, std) -> np.ndarray:
    out = pixels.astype(np.float32) / 255.0
    if mean is not None:
        out = (out - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return out


class _Pixels:
    """A transform as two halves: ``pixels`` (geometry: uint8 [N, S, S, 3], the host's or a
    grain worker's part) and ``finish`` (ToTensor's / 255 and the optional Normalize, float32),
    which is per (value, channel) and so a [256, 3] table (``lut``) a device applies exactly."""

    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None

    def __call__(self, images: Sequence[np.ndarray], rng=None) -> np.ndarray:
        return self.finish(self.pixels(images, rng))

    def finish(self, pixels: np.ndarray) -> np.ndarray:
        """uint8 [..., 3] -> float32 [..., 3]: / 255, then (x - mean) / std if set."""
        return _finish(pixels, self.mean, self.std)

    def lut(self) -> np.ndarray:
        """float32 [256, 3]: ``finish`` of every uint8 value per channel (bit for bit)."""
        return self.finish(np.repeat(np.arange(256, dtype=np.uint8)[:, None], 3, axis=1))


def random_resized_crop_params(height: int, width: int, scale, ratio,
                               rng: np.random.Generator) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a random crop: torchvision RandomResizedCrop.get_params.

    Up to 10 tries of area fraction ~ U(scale) and log aspect ratio ~ U(log ratio); falls back
    to the largest centred crop whose aspect ratio lies in `ratio`.
    """
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        h, w = height, int(round(height * max(ratio)))
    else:
        h, w = height, width
    return (height - h) // 2, (width - w) // 2, h, w


@dataclasses.dataclass(frozen=True)
class TrainTransform(_Pixels):
    """RandomResizedCrop(size, scale, ratio, bilinear) + horizontal flip with probability 0.5,
    then optional (x - mean) / std: the ``"default"`` training pipeline (official code
    ``utils/data.py``, ``build_transform(is_train=True)``).

    Call: ``(images, rng) -> float32 [N, size, size, 3]`` with images a sequence of uint8
    [H, W(, C)] arrays and rng a ``np.random.Generator``.
    """

    size: int
    scale: tuple[float, float] = (0.05, 1.0)
    ratio: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0)
    flip: bool = True
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    def pixels(self, images: Sequence[np.ndarray], rng: np.random.Generator) -> np.ndarray:
        """The crop and flip: uint8 [N, size, size, 3]."""
        out = []
        for image in images:
            image = to_rgb(image)
            top, left, h, w = random_resized_crop_params(*image.shape[:2], self.scale, self.ratio,
                                                         rng)
            crop = Image.fromarray(image).resize((self.size, self.size), Image.BILINEAR,
                                                 box=(left, top, left + w, top + h))
            crop = np.asarray(crop)
            if self.flip and rng.random() < 0.5:
                crop = crop[:, ::-1]
            out.append(crop)
        return np.stack(out)


@dataclasses.dataclass(frozen=True)
class EvalTransform(_Pixels):
    """Resize the shorter side to `resize` (bicubic), centre-crop `size` x `size`, then optional
    (x - mean) / std: the test pipeline of both ``"default"`` and ``"cars"`` (official code
    ``utils/data.py``: ``build_transform(is_train=False)``, ``iCARS196_224.test_trsf``).

    `resize` defaults to int(256 / 224 * size) (256 for 224). Call:
    ``(images, rng=None) -> float32 [N, size, size, 3]``; rng is ignored (deterministic).
    """

    size: int
    resize: int | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    def pixels(self, images: Sequence[np.ndarray], rng=None) -> np.ndarray:
        """The resize and centre crop: uint8 [N, size, size, 3]."""
        del rng
        short = self.resize or int(256 / 224 * self.size)
        if short < self.size:
            raise ValueError(f"resize {short} is smaller than the crop size {self.size}.")
        out = []
        for image in images:
            image = to_rgb(image)
            h, w = image.shape[:2]
            # torchvision Resize(int): the shorter side becomes `short`, the longer is truncated.
            new_w, new_h = (short, int(short * h / w)) if w <= h else (int(short * w / h), short)
            resized = np.asarray(Image.fromarray(image).resize((new_w, new_h), Image.BICUBIC))
            top = int(round((new_h - self.size) / 2.0))
            left = int(round((new_w - self.size) / 2.0))
            out.append(resized[top:top + self.size, left:left + self.size])
        return np.stack(out)


def train_transform(size: int, **kwargs) -> TrainTransform:
    """The ``"default"`` training transform at `size` px (kwargs: scale, ratio, flip, mean, std)."""
    return TrainTransform(size, **kwargs)


def test_transform(size: int, **kwargs) -> EvalTransform:
    """The ``"default"`` test transform at `size` px (kwargs: resize, mean, std)."""
    return EvalTransform(size, **kwargs)


test_transform.__test__ = False  # Not a pytest test, despite the name.


@dataclasses.dataclass(frozen=True)
class ResizeCropTransform(_Pixels):
    """Resize to `resize` x `resize` (bicubic, aspect ratio not kept), RandomCrop `size` x
    `size`, horizontal flip with probability 0.5, then optional (x - mean) / std.

    The Cars-196 training transform of the official code (``utils/data.py``, ``iCARS196_224``:
    ``Resize((300, 300), interpolation=3)``, ``RandomCrop((224, 224))``,
    ``RandomHorizontalFlip()``, ``ToTensor()``, ``Normalize(ImageNet mean, std)``). The crop
    offset is uniform over the valid range, as torchvision's ``RandomCrop.get_params``.

    Call: ``(images, rng) -> float32 [N, size, size, 3]`` with images a sequence of uint8
    [H, W(, C)] arrays and rng a ``np.random.Generator``. Raises ValueError if resize < size.
    """

    size: int
    resize: int
    flip: bool = True
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    def pixels(self, images: Sequence[np.ndarray], rng: np.random.Generator) -> np.ndarray:
        """The resize, random crop and flip: uint8 [N, size, size, 3]."""
        if self.resize < self.size:
            raise ValueError(f"resize {self.resize} is smaller than the crop size {self.size}.")
        out = []
        for image in images:
            image = to_rgb(image)
            resized = np.asarray(Image.fromarray(image).resize((self.resize, self.resize),
                                                               Image.BICUBIC))
            top = int(rng.integers(0, self.resize - self.size + 1))
            left = int(rng.integers(0, self.resize - self.size + 1))
            crop = resized[top:top + self.size, left:left + self.size]
            if self.flip and rng.random() < 0.5:
                crop = crop[:, ::-1]
            out.append(crop)
        return np.stack(out)


#: Names accepted by ``config.data.transform``.
TRANSFORMS = ("default", "cars")


def scaled(size: int, ref: int) -> int:
    """round(size * ref / 224): a side the official code fixes at 224-px input, scaled to
    `size` (300 -> 300 and 256 -> 256 at 224 px; 150 and 128 at 112 px)."""
    return int(round(size * ref / 224))


def get_transforms(data) -> tuple[TrainTransform | ResizeCropTransform, EvalTransform]:
    """(train transform, test transform) for a ``config.data`` node.

    Reads ``data.transform`` (``"default"`` if the field is absent), ``data.image_size`` and,
    for ``"default"``, ``data.train_crop_scale``. ``"cars"``: train
    ``ResizeCropTransform(size, scaled(size, 300))`` and test ``EvalTransform(size,
    scaled(size, 256))``, both normalised with the ImageNet mean / std (official code
    ``utils/data.py``, ``iCARS196_224``).

    Raises:
      ValueError: an unknown ``data.transform``, naming the valid choices.
    """
    name = getattr(data, "transform", "default")
    size = data.image_size
    if name == "default":
        return train_transform(size, scale=tuple(data.train_crop_scale)), test_transform(size)
    if name == "cars":
        norm = dict(mean=IMAGENET_MEAN, std=IMAGENET_STD)
        return (ResizeCropTransform(size, scaled(size, 300), **norm),
                EvalTransform(size, scaled(size, 256), **norm))
    raise ValueError(f"Unknown data.transform {name!r}; choose one of {list(TRANSFORMS)} "
                     "(e.g. --config.data.transform=cars for the Cars-196 pipeline).")
