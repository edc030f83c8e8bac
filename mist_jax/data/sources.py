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
import dataclasses
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from mist_jax.data.builders.embedded import EMBEDDED, prepare
from mist_jax.infra import paths
from mist_jax.data.splits import DEFAULT_ORDER_SEED, per_class_split

SPLITS = ("train", "test")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".bmp", ".tif", ".tiff", ".webp")
# Fixed-shape TFDS sets up to this size are decoded once into one numpy array.
MATERIALIZE_MAX_BYTES = 1 << 30
_READ_CHUNK = 4096


class LazyImages(Sequence):
    """Random-access uint8 [H, W, C] images, decoded on demand (subclasses define `_load`)."""

    def __len__(self) -> int:
        raise NotImplementedError

    def _load(self, indices: Sequence[int]) -> list[np.ndarray]:
        raise NotImplementedError

    def __getitem__(self, i):
        if not isinstance(i, (int, np.integer)):
            raise TypeError(f"{type(self).__name__} takes one integer index; use take() for many.")
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} images.")
        return self._load([int(i) % len(self)])[0]

    def take(self, indices: Sequence[int]) -> list[np.ndarray]:
        """Images at `indices` (batched read), a list of uint8 [H, W, C] arrays."""
        return self._load([int(i) for i in indices])


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


class _FileImages(LazyImages):
    """Image files decoded with PIL and converted to RGB (the authors' pil_loader)."""

    def __init__(self, paths: Sequence[str]):
        self._paths = list(paths)

    def __len__(self) -> int:
        return len(self._paths)

    def _load(self, indices):
        out = []
        for i in indices:
            try:
                with Image.open(self._paths[i]) as im:
                    out.append(np.asarray(im.convert("RGB"), np.uint8))
            except (OSError, ValueError) as e:
                raise ValueError(f"Cannot decode image {self._paths[i]} ({e}); replace or "
                                 "delete the file.") from e
        return out


def _check_images(paths: Sequence[str]) -> None:
    """Open every file's header (PIL ``verify``): a non-image or broken file is reported now,
    before any training, not mid-run. Raises ValueError naming up to 5 bad files."""
    bad = []
    for p in paths:
        try:
            with Image.open(p) as im:
                im.verify()
        except Exception as e:  # pylint: disable=broad-except; PIL raises many kinds
            bad.append(f"{p} ({type(e).__name__}: {e})")
    if bad:
        raise ValueError(f"{len(bad)} file(s) of the image folder are not readable images: "
                         + "; ".join(bad[:5]) + ". Replace or delete them.")


@dataclasses.dataclass(frozen=True)
class ImageSet:
    """A labelled image split.

    Attributes:
      images: uint8 [N, H, W, C] numpy array, or a ``LazyImages`` sequence of uint8 [H, W, C]
        (C = 1 or 3; sizes may differ per image).
      labels: int64 [N] class ids in [0, num_classes) (original ids, before class_order).
      num_classes: number of classes of the dataset (both splits share it).
      class_names: num_classes names, indexed by class id.
      name: dataset name as given to ``load_dataset``.
    """

    images: Any
    labels: np.ndarray
    num_classes: int
    class_names: tuple[str, ...]
    name: str = ""

    def __post_init__(self):
        if len(self.images) != len(self.labels):
            raise ValueError(f"{len(self.images)} images but {len(self.labels)} labels.")
        if len(self.class_names) != self.num_classes:
            raise ValueError(f"{len(self.class_names)} class names for {self.num_classes} classes.")

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, indices) -> np.ndarray | list[np.ndarray]:
        """uint8 images at `indices`: [n, H, W, C] array (materialised) or list of [H, W, C]."""
        indices = np.asarray(indices, np.int64)
        if isinstance(self.images, np.ndarray):
            return self.images[indices]
        return self.images.take(indices)


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
        return _load_folder(name, split)
    if manual_dir is not None:
        return _load_cars196_manual(Path(manual_dir), split)
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
    return ImageSet(images, labels, len(names), names, name)


def _iterate(source):
    """All records of a TFDS data source, read in chunks of _READ_CHUNK."""
    for s in range(0, len(source), _READ_CHUNK):
        yield from source.__getitems__(list(range(s, min(s + _READ_CHUNK, len(source)))))


def _load_folder(name: str, split: str) -> ImageSet:
    root = Path(name[len("folder:"):]).expanduser()
    split_dirs = {"train": [root / "train"], "test": [root / "test", root / "val"]}
    found = {s: next((d for d in dirs if d.is_dir()), None) for s, dirs in split_dirs.items()}
    if found[split] is None:
        wanted = " or ".join(str(d) for d in split_dirs[split])
        raise FileNotFoundError(
            f"Image folder {str(root)!r} has no {split} split: expected {wanted} holding one "
            "sub-folder of images per class (<root>/train/<class>/*.jpg, <root>/test/<class>/*).")
    per_split = {s: {c.name for c in d.iterdir() if c.is_dir()} for s, d in found.items()
                 if d is not None}
    classes = sorted(set().union(*per_split.values()))
    if found["train"] is not None and per_split["train"] != set(classes):
        only = sorted(set(classes) - per_split["train"])
        raise ValueError(f"Class folder(s) {only[:10]} of {root} have no training images "
                         f"(no {found['train']}/<class>/): every class needs both splits.")
    paths, labels = [], []
    for label, cls in enumerate(classes):
        cls_dir = found[split] / cls
        if cls_dir.is_dir():
            files = sorted(p for p in cls_dir.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
            paths += [os.fspath(p) for p in files]
            labels += [label] * len(files)
    if not paths:
        raise FileNotFoundError(
            f"No images ({', '.join(IMAGE_EXTENSIONS)}) under {found[split]}/<class>/.")
    _check_images(paths)
    return ImageSet(_FileImages(paths), np.asarray(labels, np.int64), len(classes),
                    tuple(classes), name)


def _load_cars196_manual(root: Path, split: str) -> ImageSet:
    """Stanford Cars from its original files (the layout TFDS cars196 downloads)."""
    from scipy.io import loadmat  # pylint: disable=import-outside-toplevel

    image_dir = root / ("cars_train" if split == "train" else "cars_test")
    annos = ("cars_train_annos.mat",) if split == "train" else ("cars_test_annos_withlabels.mat",)
    candidates = [root / a for a in annos] + [root / "devkit" / a for a in annos]
    anno = next((p for p in candidates if p.is_file()), None)
    meta = root / "devkit" / "cars_meta.mat"
    if anno is None or not image_dir.is_dir() or not meta.is_file():
        raise FileNotFoundError(
            f"Stanford Cars files not found in manual_dir {str(root)!r}: need {image_dir}/, "
            f"{meta} and one of {[str(c) for c in candidates]} (the contents of cars_train.tgz, "
            "cars_test.tgz, car_devkit.tgz and cars_test_annos_withlabels.mat).")
    names = np.atleast_1d(loadmat(meta, squeeze_me=True)["class_names"])
    class_names = tuple(str(n) for n in names)
    records = np.atleast_1d(loadmat(anno, squeeze_me=True)["annotations"])
    paths = [os.fspath(image_dir / str(r["fname"])) for r in records]
    labels = np.asarray([int(r["class"]) - 1 for r in records], np.int64)  # 1-based in the files
    return ImageSet(_FileImages(paths), labels, len(class_names), class_names, "cars196")
