"""Images read from files: an image folder (``folder:<root>``, torchvision ImageFolder's
layout) and Stanford Cars from its original files."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from absl import logging

from mist_jax.data import decode_check
from mist_jax.data.decode_check import decode_rgb
from mist_jax.data.image_set import ImageSet, LazyImages, files_stamp

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".bmp", ".tif", ".tiff", ".webp")


class _FileImages(LazyImages):
    """Image files decoded in full as RGB (``decode_check.decode_rgb``)."""

    def __init__(self, paths: Sequence[str]):
        self._paths = list(paths)

    def __len__(self) -> int:
        return len(self._paths)

    def _load(self, indices):
        return [decode_rgb(self._paths[i]) for i in indices]


def _scan(root: Path, found: dict[str, Path | None]) -> tuple[dict[str, dict[str, list]], list]:
    """``({split: {class: [image paths]}}, ignored paths)`` of the splits present.

    The rule (docs/benchmarks.md): images are ``<split>/<class>/<file>`` with an image suffix;
    hidden entries (a leading ".", e.g. ``.ipynb_checkpoints``) and other files are ignored
    (the caller warns); a sub-folder inside a class, a class folder without images and a class
    missing from a split are refused.
    Raises: ValueError naming up to 5 problems and the fix.
    """
    per_split, ignored, problems = {}, [], []
    for split, folder in found.items():
        if folder is None:
            continue
        per_split[split] = {}
        for cls in sorted(folder.iterdir()):
            if cls.name.startswith(".") or not cls.is_dir():
                ignored.append(cls)
                continue
            files = []
            for p in sorted(cls.iterdir()):
                if p.name.startswith("."):
                    ignored.append(p)
                elif p.is_dir():
                    problems.append(f"{p} is a sub-folder (images are read from "
                                    "<split>/<class>/ only: move its images up or delete it)")
                elif p.suffix.lower() in IMAGE_EXTENSIONS:
                    files.append(os.fspath(p))
                else:
                    ignored.append(p)
            if not files:
                problems.append(f"class folder {cls} holds no images "
                                f"({', '.join(IMAGE_EXTENSIONS)})")
            per_split[split][cls.name] = files
    names = sorted(set().union(*per_split.values()))
    for split, classes in per_split.items():
        missing = [n for n in names if n not in classes]
        if missing:
            problems.append(f"class folder(s) {missing[:10]} of {root} have no "
                            f"{'training' if split == 'train' else 'test'} images (no "
                            f"{found[split]}/<class>/): every class needs both splits")
    if problems:
        raise ValueError(f"Image folder {root}: " + "; ".join(problems[:5])
                         + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
                         + ".")
    return per_split, ignored


def load_folder(name: str, split: str) -> ImageSet:
    """``"folder:<root>"``: ``<root>/train/<class>/*`` and ``<root>/test/<class>/*`` (or
    ``val/``), class ids in sorted folder-name order. The layout of both splits is checked and
    every image decoded in full (``decode_check.check_files``, remembered) before any work.
    Raises FileNotFoundError / ValueError naming the folder or files to fix."""
    root = Path(name[len("folder:"):]).expanduser()
    split_dirs = {"train": [root / "train"], "test": [root / "test", root / "val"]}
    found = {s: next((d for d in dirs if d.is_dir()), None) for s, dirs in split_dirs.items()}
    if found[split] is None:
        wanted = " or ".join(str(d) for d in split_dirs[split])
        raise FileNotFoundError(
            f"Image folder {str(root)!r} has no {split} split: expected {wanted} holding one "
            "sub-folder of images per class (<root>/train/<class>/*.jpg, <root>/test/<class>/*).")
    per_split, ignored = _scan(root, found)
    if not per_split[split]:
        raise FileNotFoundError(f"No class folders under {found[split]}: expected "
                                f"{found[split]}/<class>/<images>.")
    if ignored and split == "train":  # said once per run (the train split is read first)
        logging.warning("Ignored %d entries of %s that are hidden or not images: %s", len(ignored),
                        root, ", ".join(os.fspath(p.relative_to(root)) for p in ignored[:5])
                        + (" ..." if len(ignored) > 5 else ""))
    classes = sorted(per_split[split])
    decode_check.check_files([f for c in per_split.values() for fs in c.values() for f in fs],
                             root)
    paths = [f for c in classes for f in per_split[split][c]]
    labels = [label for label, c in enumerate(classes) for _ in per_split[split][c]]
    ids = tuple(Path(p).relative_to(root).as_posix() for p in paths)
    return ImageSet(_FileImages(paths), np.asarray(labels, np.int64), len(classes),
                    tuple(classes), name, ids, files_stamp(paths))


def load_cars196_manual(root: Path, split: str) -> ImageSet:
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
    ids = tuple(f"{image_dir.name}/{r['fname']}" for r in records)
    return ImageSet(_FileImages(paths), labels, len(class_names), class_names, "cars196", ids,
                    files_stamp(paths))
