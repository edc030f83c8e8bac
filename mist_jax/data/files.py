"""Images read from files: an image folder (``folder:<root>``, torchvision ImageFolder's
layout) and Stanford Cars from its original files."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from mist_jax.data.image_set import ImageSet, LazyImages

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".pgm", ".bmp", ".tif", ".tiff", ".webp")


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


def load_folder(name: str, split: str) -> ImageSet:
    """``"folder:<root>"``: ``<root>/train/<class>/*`` and ``<root>/test/<class>/*`` (or
    ``val/``), class ids in sorted folder-name order. Raises FileNotFoundError / ValueError
    naming the folder or files to fix."""
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
    ids = tuple(Path(p).relative_to(root).as_posix() for p in paths)
    return ImageSet(_FileImages(paths), np.asarray(labels, np.int64), len(classes),
                    tuple(classes), name, ids)


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
    return ImageSet(_FileImages(paths), labels, len(class_names), class_names, "cars196", ids)
