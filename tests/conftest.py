"""Shared pytest setup: a private cache dir so tests never touch the user's caches."""

import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    # The embedded-backbone conversion is cached per session; honour a pre-set cache (CI reuse).
    if "MIST_JAX_CACHE" not in os.environ:
        os.environ["MIST_JAX_CACHE"] = str(tmp_path_factory.mktemp("mist_jax_cache"))
    yield
