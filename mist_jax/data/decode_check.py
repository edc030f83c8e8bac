"""Image files decoded in full before any work, and remembered so the next run does not pay.

``decode_rgb`` is the one way an image file becomes pixels (the check and the training input
use it both): PIL decodes the whole file (a truncated JPEG or PNG fails here, not after task 0),
16-bit greyscale is scaled to 8 bits (PIL's own ``convert("RGB")`` clips it to white; 48-bit
colour PIL already reads as its high bytes), and the result is RGB (the authors' pil_loader).

``check_files`` decodes every file not yet known good, in worker processes when there are many,
and remembers each good file by path, size and modification time in
``<cache_dir>/decoded/<digest of the folder>.json`` (``paths.cache_dir``).
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import multiprocessing
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from absl import logging
from PIL import Image

from mist_jax.infra import paths
from mist_jax.infra.atomic import write_text

#: PIL modes of 16-bit greyscale ("I": PNG/TIFF 16-bit read as 32-bit ints by some versions).
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")
#: Below this many unchecked files the check decodes in this process (no worker start-up).
PARALLEL_FROM = 512


def decode_rgb(path: str) -> np.ndarray:
    """The whole image at ``path`` as uint8 [H, W, 3] RGB.

    16-bit greyscale is scaled by 255 / 65535 (rounded); every other mode is PIL's RGB
    conversion (grey repeated, alpha dropped, palettes expanded).
    Raises: ValueError naming the file when it cannot be decoded in full.
    """
    try:
        with Image.open(path) as im:
            if im.mode in _SIXTEEN_BIT:
                grey = np.asarray(im).astype(np.float64)
                grey = np.clip(np.rint(grey * (255.0 / 65535.0)), 0, 255).astype(np.uint8)
                return np.repeat(grey[..., None], 3, axis=-1)
            return np.asarray(im.convert("RGB"), np.uint8)
    except Exception as e:  # pylint: disable=broad-except; PIL raises many kinds
        raise ValueError(f"Cannot decode image {path} ({type(e).__name__}: {e}); replace or "
                         "delete the file.") from e


def _problem(path: str) -> str | None:
    try:
        decode_rgb(path)
    except ValueError as e:
        return str(e.__cause__ or e)
    return None


def _stamp(path: str) -> list[int]:
    st = os.stat(path)
    return [st.st_size, st.st_mtime_ns]


def check_files(files: Sequence[str], root: str | os.PathLike) -> None:
    """Decode every file of an image folder in full, skipping those a previous check found
    good with the same size and modification time.

    Args:
      files: the image paths (any split).
      root: the folder they belong to (names the cache file).
    Raises:
      ValueError: naming up to 5 files that do not decode (and how many in all), with the fix.
    """
    cache = paths.cache_dir() / "decoded" / (
        hashlib.sha256(os.fspath(Path(root).resolve()).encode()).hexdigest()[:16] + ".json")
    try:
        known = json.loads(cache.read_text())
    except (OSError, ValueError):
        known = {}
    stamps = {f: _stamp(f) for f in files}
    todo = [f for f in files if known.get(f) != stamps[f]]
    if len(todo) >= PARALLEL_FROM:
        logging.info("Decoding %d images of %s once to check them (remembered for later "
                     "runs).", len(todo), root)
        context = multiprocessing.get_context("spawn")  # no fork of a process running JAX
        with concurrent.futures.ProcessPoolExecutor(os.cpu_count(), mp_context=context) as pool:
            problems = list(pool.map(_problem, todo, chunksize=64))
    else:
        problems = [_problem(f) for f in todo]
    bad = [f"{f} ({p})" for f, p in zip(todo, problems) if p is not None]
    good = {f: stamps[f] for f, p in zip(todo, problems) if p is None}
    if good:
        try:
            write_text(cache, json.dumps(dict(known, **good)))
        except OSError as e:  # a read-only cache: the check is only not remembered
            logging.info("Could not remember the checked images in %s (%s).", cache, e)
    if bad:
        raise ValueError(f"{len(bad)} file(s) of the image folder {root} do not decode as "
                         "images: " + "; ".join(bad[:5]) + (" ..." if len(bad) > 5 else "")
                         + ". Replace or delete them.")
