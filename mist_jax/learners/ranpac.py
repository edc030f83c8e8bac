"""RanPAC: frozen random projection + ReLU, then a ridge classifier (McDonnell et al. 2023).

docs/algorithm.md §9; official code models/ranpac_mist.py (``setup_RP``, ``replace_fc``,
``optimise_ridge_parameter``):

* W_rand ~ N(0, 1), float32[D, M] (M = 10000), drawn once at init and fixed forever;
* per task: h = ReLU(f W_rand); Q += h^T Y (Y one-hot over seen classes), G += h^T h;
* ridge lambda from 10^-8 ... 10^8 (17 values): the code shuffles the task's samples
  (``train_loader_for_CPs`` has shuffle=True), fits on the first int(0.8 N) of *this task's* h
  only (not the accumulated G, Q) and keeps the lambda with the lowest MSE on the rest (first
  minimum on ties, like ``np.argmin``). Old classes' columns are zero in both the held-out
  targets and the predictions, so the MSE over this task's columns has the same argmin as the
  code's MSE over all classes;
* W = solve(G + lambda I, Q)^T over all seen classes; logits = ReLU(x W_rand) W^T (the code's
  sigma scale is dropped: it does not change the argmax).

Unlike the code's 17 dense M x M solves, the lambda search eigendecomposes once the smaller of
the two Gram matrices of the 80% part (h^T h, M x M, or h h^T, n x n, exact by the push-through
identity) and evaluates every lambda from it. G and Q are float64 numpy on host (G takes
8 M^2 bytes: 800 MB at M = 10000); the final solve is one float64 LU solve.
"""

from __future__ import annotations

import dataclasses
from typing import ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from mist_jax.infra.programs import Program
from mist_jax.learners.base import Learner, check_task

RIDGES = tuple(10.0 ** np.arange(-8, 9))
VAL_FRACTION = 0.2


@struct.dataclass
class RanPACState:
    """RanPAC state (M = projection width, K = classes seen so far).

    Attributes:
      w_rand: float32[D, M] fixed random projection.
      weight: float32[K, M] ridge classifier W.
      gram: float64[M, M] G = sum of h^T h over all tasks.
      q: float64[M, K] Q = sum of h^T Y over all tasks.
      ridges: float64[T] lambda chosen at each task so far (for logs).
      key: uint32[2] raw PRNG key for the per-task shuffles.
    """

    w_rand: jax.Array
    weight: jax.Array
    gram: np.ndarray
    q: np.ndarray
    ridges: np.ndarray
    key: jax.Array


@jax.jit
def project(features: jax.Array, w_rand: jax.Array) -> jax.Array:
    """h = ReLU(features @ w_rand): float32[N, D] x float32[D, M] -> float32[N, M]."""
    return jax.nn.relu(features @ w_rand)


@jax.jit
def _logits(features, w_rand, weight):
    return project(features, w_rand) @ weight.T


def ridge_validation_losses(h: np.ndarray, y: np.ndarray, ridges=RIDGES) -> np.ndarray:
    """Held-out MSE of ridge fits for each lambda, from one eigendecomposition.

    With n = int(0.8 N): fit W_l = solve(H1^T H1 + l I, H1^T Y1) on the first n rows and return
    mean((H2 W_l - Y2)^2) on the rest. Uses eigh(H1^T H1) if n >= M, else eigh(H1 H1^T) with
    H1^T (H1 H1^T + l I)^-1 = (H1^T H1 + l I)^-1 H1^T; eigenvalues are clipped at 0.

    Args:
      h: float[N, M] (already shuffled), N >= 2.
      y: float[N, C] targets.
      ridges: L candidate lambdas > 0.

    Returns:
      float64[L] losses.

    Raises:
      ValueError: N < 2.
    """
    h, y = np.asarray(h, np.float64), np.asarray(y, np.float64)
    n = int(h.shape[0] * (1.0 - VAL_FRACTION))
    if n < 1 or n >= h.shape[0]:
        raise ValueError(f"Ridge selection needs >= 2 samples in the task, got {h.shape[0]}.")
    h1, y1, h2, y2 = h[:n], y[:n], h[n:], y[n:]
    if n >= h.shape[1]:
        evals, vecs = np.linalg.eigh(h1.T @ h1)
        a, b = h2 @ vecs, vecs.T @ (h1.T @ y1)
    else:
        evals, vecs = np.linalg.eigh(h1 @ h1.T)
        a, b = (h2 @ h1.T) @ vecs, vecs.T @ y1
    evals = np.maximum(evals, 0.0)
    return np.array([np.mean((a @ (b / (evals + r)[:, None]) - y2) ** 2) for r in ridges])


@dataclasses.dataclass(frozen=True)
class RanPAC(Learner):
    """RanPAC learner: projection width `num_projections` (M), candidate `ridges`."""

    name: ClassVar[str] = "ranpac"
    num_projections: int = 10000
    ridges: tuple[float, ...] = RIDGES

    @classmethod
    def default_config(cls):
        """``num_projections`` only (the ridge grid is the official one)."""
        config = super().default_config()
        del config["ridges"]
        return config

    def init(self, key: jax.Array, feature_dim: int) -> RanPACState:
        """Draw W_rand ~ N(0, 1) [D, M] from `key`; empty classifier and statistics."""
        if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
            key = jax.random.key_data(key)
        proj_key, key = jax.random.split(key)
        m = self.num_projections
        return RanPACState(
            w_rand=jax.random.normal(proj_key, (feature_dim, m), jnp.float32),
            weight=jnp.zeros((0, m), jnp.float32),
            gram=np.zeros((m, m), np.float64),
            q=np.zeros((m, 0), np.float64),
            ridges=np.zeros((0,), np.float64),
            key=key)

    def fit_task(self, state: RanPACState, features, labels,
                 task_range: tuple[int, int]) -> RanPACState:
        """Accumulate G, Q with the task, choose lambda on it, re-solve W over all seen classes.

        Raises:
          ValueError: see ``base.check_task``; fewer than 2 samples.
        """
        num_seen = state.q.shape[1]
        features, labels = check_task(features, labels, task_range, num_seen,
                                      state.w_rand.shape[0])
        start, end = task_range
        h = np.asarray(project(jnp.asarray(features), state.w_rand), np.float64)
        y = np.eye(end - start)[labels - start]  # one-hot over this task's classes
        # np.asarray: a restored checkpoint may hand back jax arrays (float32 without x64).
        gram = np.asarray(state.gram, np.float64) + h.T @ h
        q = np.concatenate([np.asarray(state.q, np.float64), h.T @ y], axis=1)  # old: Y rows 0
        key, shuffle_key = jax.random.split(state.key)
        perm = np.asarray(jax.random.permutation(shuffle_key, h.shape[0]))
        losses = ridge_validation_losses(h[perm], y[perm], self.ridges)
        ridge = float(self.ridges[int(np.argmin(losses))])
        system = gram.copy()
        system[np.diag_indices_from(system)] += ridge
        weight = np.linalg.solve(system, q).T
        ridges = np.append(np.asarray(state.ridges, np.float64), ridge)
        return RanPACState(w_rand=state.w_rand, weight=jnp.asarray(weight, jnp.float32),
                           gram=gram, q=q, ridges=ridges, key=key)

    def programs(self, state, backbone, images, num_classes) -> list[Program]:
        """The projection of a task's features (once per training image) and the logits of a
        test batch over ``num_classes`` classes."""
        dim, m = state.w_rand.shape
        feats = jax.ShapeDtypeStruct((images.shape[0], dim), jnp.float32)
        weight = jax.ShapeDtypeStruct((num_classes, m), jnp.float32)
        return [Program("ranpac projection", project, (feats, state.w_rand), images.shape[0],
                        train_passes=1),
                Program("ranpac logits", _logits, (feats, state.w_rand, weight), images.shape[0],
                        test_passes=1)]

    def logits(self, state: RanPACState, features) -> jax.Array:
        """ReLU(x W_rand) W^T: float32[N, num_seen]."""
        return _logits(jnp.asarray(features, jnp.float32), state.w_rand, state.weight)
