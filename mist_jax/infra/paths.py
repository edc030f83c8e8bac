"""Where mist-jax keeps files it did not get from the user: one place for every default.

* ``cache_dir()``: converted pre-trained weights, the XLA compilation cache (``xla/``):
  ``$MIST_JAX_CACHE`` or ``~/.cache/mist_jax``.
* ``data_dir()``: TFDS data sets, the embedded ones built there on first use:
  ``$MIST_JAX_DATA``, else TFDS's own default (``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``).
* ``xla_cache_dir()``: ``$MIST_JAX_XLA_CACHE`` (``0``: off -> None) or ``cache_dir()/xla``.

Each reads the environment when called, so a test (or a notebook) may set the variables late.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """``$MIST_JAX_CACHE`` or ``~/.cache/mist_jax``: where converted weights are cached."""
    return Path(os.environ.get("MIST_JAX_CACHE", Path.home() / ".cache" / "mist_jax"))


def data_dir() -> str:
    """``$MIST_JAX_DATA`` if set, else the TFDS default (``$TFDS_DATA_DIR`` or
    ``~/tensorflow_datasets``): where data sets are looked for and embedded ones are built."""
    if os.environ.get("MIST_JAX_DATA"):
        return os.environ["MIST_JAX_DATA"]
    from tensorflow_datasets.core import constants  # TFDS's own rule, read when needed

    return os.fspath(constants.DATA_DIR)


def xla_cache_dir() -> Path | None:
    """The XLA compilation cache's folder: ``$MIST_JAX_XLA_CACHE`` (``0`` -> None: off), else
    ``cache_dir() / "xla"``."""
    setting = os.environ.get("MIST_JAX_XLA_CACHE", "")
    if setting == "0":
        return None
    return Path(setting) if setting else cache_dir() / "xla"
