"""Offline TFDS builders of the embedded benchmark (Fashion-MNIST, MNIST-5k, Animal-Shape)."""

from mist_jax.data.builders.embedded import EMBEDDED, prepare

__all__ = ["EMBEDDED", "prepare"]
