"""JAX's persistent compilation cache for mist-jax's entry points.

Every run (and every cell of a study, every test process) jit-compiles the same programs: on a
2-core CPU that is about a minute of a few-minute run. With XLA's compiled executables kept on
disk (``jax_compilation_cache_dir``), later processes load them instead of compiling. The
executable is the one the compiler would build, so results do not change (the bitwise resume
tests run with the cache on).

Its folder: ``paths.xla_cache_dir()`` (``MIST_JAX_XLA_CACHE=0`` turns it off).
"""

from __future__ import annotations

from pathlib import Path

import jax

from mist_jax.infra import paths


def enable() -> Path | None:
    """Turn the cache on for this process (before the first compile); returns its folder, or
    None when ``MIST_JAX_XLA_CACHE=0``. Programs that compile in under 0.5 s are not stored."""
    path = paths.xla_cache_dir()
    if path is None:
        return None
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    return path
