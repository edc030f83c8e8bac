"""A function under test run both ways, jitted and eagerly (what ``chex.variants(with_jit,
without_jit)`` did): ``@pytest.mark.parametrize("variant", VARIANTS)``, then ``variant(f)``."""

import jax
import pytest

VARIANTS = [pytest.param(jax.jit, id="jit"), pytest.param(lambda f: f, id="eager")]
