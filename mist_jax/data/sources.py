"""Labelled image sources: TFDS (random access), image folders, Stanford Cars files, embedded.

One entry point, ``load_dataset(name, split)``, returns an ``ImageSet``: uint8 HWC images
(a numpy array, or a lazy random-access sequence for large sets), int64 labels, class names.
Nothing here ever downloads (TFDS downloads can fail, and the cars196 URLs are dead):

* ``"cifar100"``, ``"caltech_birds2011"``, ``"cars196"``, ``"imagenet_r"``, ``"imagenet_a"``
  or any other TFDS name: read with ``builder.as_data_source`` from a data dir where it was
  prepared in ``array_record`` format. Sets with a single split (ImageNet-R/A: test only) get a
  seeded per-class 80/20 train/test split and compact labels (ImageNet-R/A use 200 of the 1,000
  ImageNet ids; they become 0..199 in increasing ImageNet id, i.e. sorted-wnid order, the order
  of the authors' ImageFolder).
* ``"folder:<root>"``: ``<root>/train/<class>/*`` and ``<root>/test/<class>/*`` (``val/`` is
  accepted for test), class ids in sorted folder-name order (torchvision ImageFolder, the
  authors' loader; use it for their ImageNet-R/A and CUB file lists).
* ``"cars196"`` with ``manual_dir``: the original Stanford Cars files (``cars_train/``,
  ``cars_test/``, ``devkit/cars_train_annos.mat``, ``cars_test_annos_withlabels.mat``,
  ``devkit/cars_meta.mat``).
* ``"mist_fashion_mnist"``, ``"mist_mnist5k"``, ``"mist_animal_shape"``, ``"mist_multi_domain"``
  (default benchmark): built offline on first use (``builders/embedded.py``).

Data dir: ``data_dir`` argument, else ``$MIST_JAX_DATA``, else the TFDS default
(``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds

from mist_jax.data import files
from mist_jax.data.builders.embedded import EMBEDDED, prepare
from mist_jax.data.image_set import ImageSet, LazyImages, files_stamp
from mist_jax.infra import paths
from mist_jax.data.splits import DEFAULT_ORDER_SEED, per_class_split

SPLITS = ("train", "test")
# Fixed-shape TFDS sets up to this size are decoded once into one numpy array.
MATERIALIZE_MAX_BYTES = 1 << 30
_READ_CHUNK = 4096


class _TfdsImages(LazyImages):
    """Images of a TFDS data source, restricted to `rows` (record ids)."""

    def __init__(self, source, rows: np.ndarray, key: str, name: str, folder: str):
        self._source, self._rows, self._key = source, np.asarray(rows, np.int64), key
        self._name, self._folder = name, folder

    def __len__(self) -> int:
        return int(self._rows.size)

    def _load(self, indices):
        with _reading(self._name, self._folder):
            records = self._source.__getitems__([int(r) for r in self._rows[indices]])
            return [np.asarray(r[self._key], np.uint8) for r in records]


def load_dataset(name: str, split: str, *, data_dir: str | os.PathLike | None = None,
                 manual_dir: str | os.PathLike | None = None,
                 split_seed: int = DEFAULT_ORDER_SEED,
                 materialize: bool | None = None) -> ImageSet:
    """Load one split of a dataset, offline (see the module docstring for names and layouts).

    Args:
      name: TFDS name, embedded name (``mist_*``), or ``"folder:<root>"``.
      split: "train" or "test".
      data_dir: TFDS data dir (default ``paths.data_dir()``); embedded sets are built there.
      manual_dir: cars196 only: folder with the original Stanford Cars files.
      split_seed: seed of the per-class 80/20 split of single-split TFDS sets.
      materialize: TFDS only: decode all images into one array (True), keep them lazy (False),
        or decide by size (None: fixed-shape sets up to ``MATERIALIZE_MAX_BYTES``).

    Returns:
      The split as an ``ImageSet``.

    Raises:
      ValueError: bad split, unknown TFDS name, manual_dir for another dataset, a TFDS set
        stored in a format without random access, or one whose files cannot be read (names
        the folder to delete and rebuild; also raised by a lazy set's later reads).
      FileNotFoundError: the dataset is not on disk; the message says where it was looked for
        and how to provide it. Never downloads.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}.")
    if manual_dir is not None and name != "cars196":
        raise ValueError(
            f"manual_dir is only used for cars196 (Stanford Cars files), not {name!r}.")
    if name.startswith("folder:"):
        return files.load_folder(name, split)
    if manual_dir is not None:
        return files.load_cars196_manual(Path(manual_dir), split)
    data_dir = os.fspath(data_dir) if data_dir is not None else paths.data_dir()
    if name in EMBEDDED:
        builder = prepare(name, data_dir)
    else:
        builder = _prepared_tfds_builder(name, data_dir)
    return _load_tfds(builder, name, split, split_seed, materialize)


def _missing_message(name: str, data_dir: str, where: str) -> str:
    cars = ("\n  * cars196 (its TFDS URLs are dead): pass manual_dir=<folder with the Stanford "
            "Cars files cars_train/, cars_test/, devkit/, cars_test_annos_withlabels.mat>."
            if name == "cars196" else "")
    return (
        f"Dataset {name!r} is not prepared in data_dir {data_dir!r} (looked for {where}); "
        "mist-jax never downloads. Provide it one of these ways:\n"
        f"  * on a machine with network and TensorFlow: `tfds build {name} --data_dir=DIR "
        f"--file_format=array_record`, then copy DIR/{name} into {data_dir} (or pass "
        "data_dir / set $MIST_JAX_DATA);\n"
        f"  * an image folder: name='folder:<root>' with <root>/train/<class>/*.jpg and "
        f"<root>/test/<class>/*.jpg.{cars}")


def _damaged(name: str, folder: str, e: Exception) -> ValueError:
    return ValueError(
        f"Dataset {name!r} in {folder} cannot be read ({type(e).__name__}: {e}); its files are "
        f"damaged or incomplete. Delete {folder} and prepare it again (`tfds build {name} "
        "--file_format=array_record`, then copy it there).")


@contextlib.contextmanager
def _reading(name: str, folder: str):
    """Turn any failure to read a prepared TFDS set (a damaged or truncated shard, a corrupt
    ``dataset_info.json``) into a ValueError naming the folder to delete and rebuild."""
    try:
        yield
    except Exception as e:  # pylint: disable=broad-except; TFDS/array_record raise many kinds
        raise _damaged(name, folder, e) from e


def _prepared_tfds_builder(name: str, data_dir: str):
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError as e:
        raise ValueError(
            f"Unknown dataset {name!r}: not a TFDS name, not one of the embedded sets "
            f"{sorted(EMBEDDED)}, and not 'folder:<root>'.") from e
    except Exception as e:  # pylint: disable=broad-except; e.g. a corrupt dataset_info.json
        raise _damaged(name, os.path.join(data_dir, name), e) from e
    with _reading(name, os.fspath(builder.data_dir)):
        prepared = builder.is_prepared()
    if not prepared:
        raise FileNotFoundError(_missing_message(name, data_dir, os.fspath(builder.data_dir)))
    formats = builder.info.available_file_formats()
    if not formats & tfds.core.file_adapters.FileFormat.with_random_access():
        raise ValueError(
            f"Dataset {name!r} in {builder.data_dir} is stored as "
            f"{sorted(f.value for f in formats)}, which has no random access. Rebuild it with "
            f"`tfds build {name} --file_format=array_record` (or convert it with "
            "`tfds convert_format --out_file_format=array_record`).")
    return builder


def _load_tfds(builder, name: str, split: str, split_seed: int,
               materialize: bool | None) -> ImageSet:
    image_key, label_key = builder.info.supervised_keys or ("image", "label")
    label_feature = builder.info.features[label_key]
    names = tuple(label_feature.names)
    splits = list(builder.info.splits.keys())
    if set(SPLITS) <= set(splits):
        source_split, single = split, False
    elif len(splits) == 1:
        source_split, single = splits[0], True
    else:
        raise ValueError(f"Dataset {name!r} has splits {splits}; expected 'train' and 'test', "
                         "or a single split to cut 80/20.")
    folder = os.fspath(builder.data_dir)
    with _reading(name, folder):
        source = builder.as_data_source(source_split)
    image_feature = builder.info.features[image_key]
    shape = tuple(image_feature.shape)
    fixed = None not in shape
    if materialize and not fixed:
        raise ValueError(f"materialize=True needs a fixed image shape; {name!r} has {shape}.")
    if materialize is None:
        size = len(source) * int(np.prod(shape)) if fixed else MATERIALIZE_MAX_BYTES + 1
        materialize = size <= MATERIALIZE_MAX_BYTES
    with _reading(name, folder):
        if materialize:
            records = list(_iterate(source))
            labels = np.asarray([r[label_key] for r in records], np.int64)
            images = np.zeros((len(records), *shape), np.uint8)
            for i, r in enumerate(records):
                images[i] = r[image_key]
        else:
            label_source = builder.as_data_source(
                source_split, decoders={image_key: tfds.decode.SkipDecoding()})
            labels = np.asarray([r[label_key] for r in _iterate(label_source)], np.int64)
            images = None
    rows = np.arange(labels.size)
    if single:
        present = np.unique(labels)  # e.g. the 200 ImageNet ids of ImageNet-R/A
        names = tuple(names[c] for c in present)
        labels = np.searchsorted(present, labels).astype(np.int64)
        rows = per_class_split(labels, 0.8, split_seed)[SPLITS.index(split)]
        labels = labels[rows]
    if images is not None:
        images = images[rows]
    else:
        images = _TfdsImages(source, rows, image_key, name, folder)
    ids = tuple(f"{source_split}/{r}" for r in rows)
    shards = [os.path.join(folder, f) for f in os.listdir(folder)]
    return ImageSet(images, labels, len(names), names, name, ids, files_stamp(shards))


def _iterate(source):
    """All records of a TFDS data source, read in chunks of _READ_CHUNK."""
    for s in range(0, len(source), _READ_CHUNK):
        yield from source.__getitems__(list(range(s, min(s + _READ_CHUNK, len(source)))))
