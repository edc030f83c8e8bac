"""mist-jax: Mutual-Information-guided Sparse Tuning (MIST, arXiv 2505.19943) in JAX/Flax."""

__version__ = "0.1.0"
