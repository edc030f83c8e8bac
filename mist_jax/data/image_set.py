"""What every image source returns: an ``ImageSet`` (images, labels, class names) whose
images are a numpy array or a ``LazyImages`` sequence decoded on demand."""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np


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
      ids: N identifiers another copy of the data set gives the same images (a file's path
        below the folder root, or ``"<TFDS split>/<record>"``); None: ``"<i>"`` positions.
      stamp: ``files_stamp`` of the files the images are read from ("" for arrays built in
        memory): it changes when a file is replaced, even under the same name.
    """

    images: Any
    labels: np.ndarray
    num_classes: int
    class_names: tuple[str, ...]
    name: str = ""
    ids: tuple[str, ...] | None = None
    stamp: str = ""

    def __post_init__(self):
        if len(self.images) != len(self.labels):
            raise ValueError(f"{len(self.images)} images but {len(self.labels)} labels.")
        if self.ids is not None and len(self.ids) != len(self.labels):
            raise ValueError(f"{len(self.ids)} ids for {len(self.labels)} images.")
        if len(self.class_names) != self.num_classes:
            raise ValueError(f"{len(self.class_names)} class names for {self.num_classes} classes.")

    def __len__(self) -> int:
        return len(self.labels)

    def image_ids(self, indices) -> list[str]:
        """The identifiers of the images at `indices` (``ids``, or their positions)."""
        if self.ids is None:
            return [str(int(i)) for i in indices]
        return [self.ids[int(i)] for i in indices]

    def take(self, indices) -> np.ndarray | list[np.ndarray]:
        """uint8 images at `indices`: [n, H, W, C] array (materialised) or list of [H, W, C]."""
        indices = np.asarray(indices, np.int64)
        if isinstance(self.images, np.ndarray):
            return self.images[indices]
        return self.images.take(indices)


def files_stamp(paths: Iterable[str | os.PathLike]) -> str:
    """SHA-256 (hex) of each file's absolute path, size and modification time (ns), in sorted
    path order: what a cache of results computed from these files is keyed by.

    Raises:
      OSError: a file cannot be stat'ed (it vanished since it was listed).
    """
    h = hashlib.sha256()
    for path in sorted(os.path.abspath(p) for p in paths):
        st = os.stat(path)
        h.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()
