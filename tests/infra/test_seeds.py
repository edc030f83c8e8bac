"""Seed sequences (mist_jax/infra/seeds.py): distinct streams never share a generator."""

import itertools

import jax
import numpy as np
import pytest

from mist_jax.infra import seeds


def test_old_arithmetic_collisions_are_gone():
    # seed * 100003 + t * 101 + e gave (t=0, e=101) and (t=1, e=0) the same generator.
    a = seeds.rng(0, "order", 0, 101).permutation(1000)
    b = seeds.rng(0, "order", 1, 0).permutation(1000)
    assert not np.array_equal(a, b)


def test_every_stream_task_epoch_is_distinct():
    draws = {}
    for stream, t, e in itertools.product(seeds.STREAMS, range(3), range(3)):
        draws[(stream, t, e)] = tuple(seeds.rng(7, stream, t, e).integers(0, 2**62, 2))
        key = tuple(np.asarray(jax.random.key_data(seeds.key(7, stream, t, e))))
        draws[("key", stream, t, e)] = key
    assert len(set(draws.values())) == len(draws)


def test_sequences_are_reproducible_and_documented():
    assert seeds.sequence(3, "order", 2, 5) == (3, seeds.STREAMS.index("order"), 2, 5)
    np.testing.assert_array_equal(seeds.rng(3, "views", 1).random(4),
                                  np.random.default_rng((3, seeds.STREAMS.index("views"), 1)).random(4))
    want = jax.random.fold_in(jax.random.fold_in(jax.random.key(3), seeds.STREAMS.index("drop")), 4)
    np.testing.assert_array_equal(jax.random.key_data(seeds.key(3, "drop", 4)),
                                  jax.random.key_data(want))
    with pytest.raises(ValueError, match="Unknown random stream"):
        seeds.rng(0, "nope")


def test_raw_key_accepts_ints_and_keys():
    np.testing.assert_array_equal(seeds.raw_key(5), jax.random.PRNGKey(5))
    np.testing.assert_array_equal(seeds.raw_key(jax.random.key(5)), jax.random.PRNGKey(5))
    np.testing.assert_array_equal(seeds.raw_key(jax.random.PRNGKey(5)), jax.random.PRNGKey(5))
