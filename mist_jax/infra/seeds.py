"""Seed sequences: every random stream of a run derives from ``(config.seed, stream, *indices)``.

A stream is named (``"order"`` for the batch order of task t, epoch e; ``"drop"`` for MIST's
stochastic drop on task t; ...), so no two streams share a generator whatever the number of
tasks, epochs or batches (the earlier ``seed * 100003 + t * 101 + e`` arithmetic collided once
``mist.epochs`` reached 102). NumPy streams are ``np.random.default_rng`` of the integer
sequence (a ``SeedSequence``); JAX streams fold each index into ``jax.random.key(seed)``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

#: The named streams of a run, in a fixed order (a stream's id is its index here).
STREAMS: tuple[str, ...] = (
    "subsample",  # per-class subsample of the train and test images
    "split",      # the validation split carved from the training images
    "order",      # batch order of (task, epoch)
    "transform",  # train-transform draw of (task, epoch, image position)
    "views",      # MIST's second views of (task, epoch, batch)
    "drop",       # MIST's stochastic drop and random selector of a task
    "head",       # the projection head's init
    "learner",    # the learner's own randomness (e.g. RanPAC's projection)
    "backbone",   # the init of a random (not pre-trained) backbone
    "learner_order",      # batch order of an image learner's (task, epoch)
    "learner_transform",  # train-transform draw of an image learner's (task, epoch, position)
    "learner_dropout",    # an image learner's dropout of (task, epoch, batch)
)


def _stream(name: str) -> int:
    if name not in STREAMS:
        raise ValueError(f"Unknown random stream {name!r}; choose one of {STREAMS}.")
    return STREAMS.index(name)


def sequence(seed: int, stream: str, *indices: int) -> tuple[int, ...]:
    """The integer seed sequence ``(seed, stream id, *indices)`` of one NumPy stream.

    Raises: ValueError for an unknown stream name.
    """
    return (int(seed), _stream(stream), *(int(i) for i in indices))


def rng(seed: int, stream: str, *indices: int) -> np.random.Generator:
    """``np.random.default_rng(sequence(seed, stream, *indices))``."""
    return np.random.default_rng(sequence(seed, stream, *indices))


def key(seed: int, stream: str, *indices: int) -> jax.Array:
    """Typed PRNG key ``fold_in(... fold_in(fold_in(key(seed), stream id), i0) ..., ik)``."""
    k = jax.random.fold_in(jax.random.key(int(seed)), _stream(stream))
    for i in indices:
        k = jax.random.fold_in(k, i)
    return k


def raw_key(seed_or_key) -> jax.Array:
    """uint32[2] raw key from an int seed (``PRNGKey(seed)``), a typed key or a raw key."""
    if isinstance(seed_or_key, (int, np.integer)):
        return jax.random.PRNGKey(int(seed_or_key))
    k = jnp.asarray(seed_or_key) if not isinstance(seed_or_key, jax.Array) else seed_or_key
    if jnp.issubdtype(k.dtype, jax.dtypes.prng_key):
        return jax.random.key_data(k)
    return k
