"""JAX's persistent compilation cache for mist-jax's entry points.

Every run (and every cell of a study, every test process) jit-compiles the same programs: on a
2-core CPU that is about a minute of a few-minute run. With XLA's compiled executables kept on
disk (``jax_compilation_cache_dir``), later processes load them instead of compiling. The
executable is the one the compiler would build, so results do not change (the bitwise resume
tests run with the cache on).

``MIST_JAX_XLA_CACHE``: unset -> ``<cache dir>/xla`` (``$MIST_JAX_CACHE`` or
``~/.cache/mist_jax``); ``0`` -> off; any other value -> that folder.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax


def enable() -> Path | None:
    """Turn the cache on for this process (before the first compile); returns its folder, or
    None when ``MIST_JAX_XLA_CACHE=0``. Programs that compile in under 0.5 s are not stored."""
    setting = os.environ.get("MIST_JAX_XLA_CACHE", "")
    if setting == "0":
        return None
    from mist_jax.models.pretrained import cache_dir

    path = Path(setting) if setting else cache_dir() / "xla"
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    return path
