"""Shared pytest setup: the repository root (``configs``) and tests/ (``support``) on the
import path, and private cache and data dirs so tests never touch the user's."""

import os
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
for _path in (TESTS.parent, TESTS):  # ``import configs`` and ``import support``
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    # The embedded-backbone conversion is cached per session; honour a pre-set cache (CI reuse).
    # Embedded datasets are built into a private TFDS data dir, unless one is given (CI reuse).
    for var, name in (("MIST_JAX_CACHE", "mist_jax_cache"), ("MIST_JAX_DATA", "tfds_data")):
        if var not in os.environ:
            os.environ[var] = str(tmp_path_factory.mktemp(name))
    # XLA's persistent compilation cache under MIST_JAX_CACHE, as the CLI uses it: the same
    # programs compiled by many tests (and their CLI subprocesses) compile once per worker.
    from mist_jax.infra import compilation_cache

    compilation_cache.enable()
    yield
