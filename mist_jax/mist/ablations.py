"""The authors' own ablation procedures, ``mist.spr = "rand" | "l2" | "grad"`` (not MIST).

The official files (``models/{simplecil,ranpac}_mist.py``, ``_run_rand`` / ``_run_l2`` /
``_run_grad``, selected by their ``spr`` argument) compare MIST with procedures that differ from
it in more than the score: cross-entropy of a classifier over the current task's classes
(``logits[:, known:]``) on one view, every epoch an update epoch (no scoring pass), a mask
recomputed at every step from the step's own quantities, no drop, no overlap damping, no
freezing. Per step, every parameter (backbone, head) keeps the gradient of:

  rand  k = max(1, int(rate * n)) elements of each tensor drawn uniformly (``randperm[:k]``);
  l2    each tensor's k = int(rate * n) largest weights |w| (k = 0: none), ties included;
  grad  the k = int(rate * N) largest |g| over all parameters at once (k = 0: none).

``rate`` is ``mist.select_rate``; the files hard-code 0.05 for ``rand``, and 0.005 (SimpleCIL
file) or 0.05 (RanPAC file) for ``l2`` / ``grad``. Then the authors' SGD as for MIST (backbone
``learning_rate``, head ``head_learning_rate``, momentum and weight decay on every element).
The classifier is the run's head: a Dense layer over all classes, kept across tasks, its logits
outside the task's classes masked (the authors' cosine ``fc`` is a deviation we do not copy).
docs/algorithm.md §13 compares these with ``mist.selector`` ablations, which change only the score.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Iterable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from mist_jax.mist import inner, masks, objectives, tuner
from mist_jax.infra import seeds, sharding

PyTree = Any
#: ``mist.spr`` values: "mist" (MIST itself) and the authors' three ablation procedures.
MODES = ("mist", "rand", "l2", "grad")


def requested(mist_cfg: Any) -> bool:
    """Whether ``config.mist`` asks for one of the authors' ablation procedures (``spr`` of
    rand | l2 | grad) instead of MIST; a config without the key is MIST."""
    return mist_cfg.spr != "mist"


class StepMaskState(NamedTuple):
    """State of ``step_mask``: int32 step count and the uint32[2] raw PRNG key of ``rand``."""

    step: jax.Array
    key: jax.Array


def _top_k_mask(values: jax.Array, k: int) -> jax.Array:
    """values >= the k-th largest value (ties included), bool, same shape; none for k = 0."""
    if k <= 0:
        return jnp.zeros(values.shape, bool)
    threshold = jax.lax.top_k(values.reshape(-1), k)[0][-1]
    return values >= threshold


def step_mask(kind: str, rate: float, seed: Any = 0) -> optax.GradientTransformation:
    """The per-step gradient mask of ``spr = kind`` (module docstring), as an optax transform.

    Args:
      kind: "rand", "l2" or "grad".
      rate: the budget in (0, 1].
      seed: int seed or PRNG key of ``rand``'s draws (step s, tensor i: ``fold_in`` of both).
    Returns: a transform whose ``update(grads, state, params)`` zeroes every other gradient
      element (``params`` needed by "l2").
    Raises: ValueError for another kind or a rate outside (0, 1].
    """
    if kind not in MODES[1:]:
        raise ValueError(f"spr step mask {kind!r}: use one of {MODES[1:]}.")
    masks.check_rate("spr rate", rate)

    def init(params):
        del params
        return StepMaskState(jnp.zeros([], jnp.int32), seeds.raw_key(seed))

    def update(grads, state, params=None):
        leaves, treedef = jax.tree.flatten(grads)
        if kind == "rand":
            key = jax.random.fold_in(state.key, state.step)
            keep = [_top_k_mask(jax.random.uniform(jax.random.fold_in(key, i), g.shape),
                                max(1, int(rate * g.size))) for i, g in enumerate(leaves)]
        elif kind == "l2":
            if params is None:
                raise ValueError("spr='l2' needs params in update(grads, state, params).")
            keep = [_top_k_mask(jnp.abs(p), int(rate * p.size))
                    for p in treedef.flatten_up_to(params)]
        else:
            flat = jnp.concatenate([jnp.abs(g).reshape(-1).astype(jnp.float32) for g in leaves])
            k = int(rate * flat.size)
            threshold = jax.lax.top_k(flat, k)[0][-1] if k > 0 else jnp.inf
            keep = [jnp.abs(g).astype(jnp.float32) >= threshold for g in leaves]
        out = [jnp.where(m, g, jnp.zeros_like(g)) for g, m in zip(leaves, keep)]
        return jax.tree.unflatten(treedef, out), StepMaskState(state.step + 1, state.key)

    return optax.GradientTransformation(init, update)


def make_loss_fn(model: nn.Module, preprocess: Callable, num_classes: int) -> Callable:
    """Cross-entropy over the task's classes: ``loss(params, batch) -> float32 scalar``.

    ``batch = (images float32[B, S, S, 3], labels int32[B], key (unused), task_range
    int32[2] = (first class, end))``; ``params = {"backbone", "head": Dense(num_classes)}``.
    Logits of classes outside ``[first, end)`` are masked out (``logits[:, known:]``).
    """
    head = nn.Dense(num_classes)

    def loss_fn(params, batch):
        images, labels, _, task_range = batch
        feats = model.apply({"params": params["backbone"]}, preprocess(images))
        logits = head.apply({"params": params["head"]}, feats).astype(jnp.float32)
        return objectives.masked_cross_entropy(logits, labels, task_range)

    return loss_fn


class SprTuner:
    """``tuner.Tuner``'s counterpart for ``spr = rand | l2 | grad``: same arguments, same
    ``adapt`` contract (boundaries, bitwise resume), plus ``task_range``.

    Raises: ValueError for an unknown mode, optimizer or rate.
    """

    def __init__(self, loss_fn: Callable, cfg: Any, params: PyTree,
                 mesh: sharding.MeshContext | None = None):
        if cfg.spr not in MODES[1:]:
            raise ValueError(f"SprTuner needs mist.spr in {MODES[1:]}, got {cfg.spr!r}.")
        self.loss_fn, self.cfg = loss_fn, cfg
        self.mesh = mesh or sharding.MeshContext(sharding.make_mesh())
        self.tx = optax.chain(step_mask(cfg.spr, cfg.select_rate), inner.from_config(cfg))

        def init(params, mask, count, frozen, key):  # tuner.tune's signature; no task mask
            del mask, count, frozen
            first, inner_state = self.tx.init(params)
            return first._replace(key=seeds.raw_key(key)), inner_state

        self.param_shardings, self.opt_shardings, self.init, self.step = tuner.jit_steps(
            self.mesh, loss_fn, self.tx, params, init)

    def adapt(self, params: PyTree, state: masks.MistState,
              epoch_batches: Callable[[int, int], Iterable], key: jax.Array,
              on_step: Callable[[dict], None] | None = None,
              at_boundary: tuner.Boundary | None = None, resume: dict | None = None,
              task_range: tuple[int, int] = (0, 0)) -> tuple[PyTree, masks.MistState, dict]:
        """``mist.epochs`` update epochs of the procedure on one task (epoch 0 included).

        ``task_range``: ``(first class, end)`` of the task, whose logits the loss keeps.
        Returns ``(tuned params, state unchanged, log)``: ``mi_loss_per_epoch`` (here the
        cross-entropy), ``updated_fraction``, ``steps``, ``images``, ``seconds``,
        ``images_per_second`` and ``spr``. Raises: ValueError on a NaN/inf loss.
        """
        t0 = time.perf_counter() - float((resume or {}).get("seconds", 0.0))
        rng = np.asarray(task_range, np.int32)
        batches = lambda e, start: ((*b, rng) for b in epoch_batches(e, start))
        at = None if at_boundary is None else (lambda pos, get: at_boundary(
            pos, lambda: {**get(), "seconds": time.perf_counter() - t0}))
        params, stats = tuner.tune(self, params, None, state, key, batches, on_step,
                                  at_boundary=at, resume=resume, first_epoch=0)
        seconds = time.perf_counter() - t0
        return params, state, dict(stats, seconds=seconds, spr=self.cfg.spr,
                                   images_per_second=stats["images"] / max(seconds, 1e-9))
