"""One MIST adaptation of the backbone on one task (docs/algorithm.md §1; code models/*_mist.py `_mist_run`).

Four functions, each callable on its own (a notebook can stop after any of them):

  scores = score(tuner, params, batches, frozen)        # epoch 1: no update
  mask = select(tuner.cfg, params, scores, key)          # top select_rate per unit
  params, stats = tune(tuner, params, mask, state, key, epoch_batches)   # epochs 2..E
  state = bookkeep(tuner.cfg, state, mask, scores)      # count overlaps, freeze

``Tuner.adapt`` runs the four in order, the learner-independent piece the runner calls before
each learner's fit (the original code copies this loop into every learner). A ``Tuner`` builds
the optimizer once for the whole run, with the optimizer state's shardings worked out from
``jax.eval_shape`` and its per-task init jitted with those out-shardings; scoring and tuning are
``jax.jit``-ed with explicit in/out shardings on a ``MeshContext`` (mist_jax/infra/sharding.py):
batches split over the devices, params / scores / masks / optimizer state replicated or
FSDP-sharded, params and optimizer state donated; nothing leaves the device between steps.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mist_jax.infra import loop, sharding
from mist_jax.mist import inner as inner_lib
from mist_jax.mist import mask_stats, masks, optim, sensitivity
from mist_jax.mist.losses import init_head, make_loss_fn, make_view_loss_fn

PyTree = Any
#: ``at_boundary(position, state)``: called at every step boundary of an adaptation with
#: ``position = {"phase", "epoch", "batch"}`` (batches of that epoch done) and a function
#: returning what is needed to continue from there (arrays and numbers; ``Tuner.adapt``'s
#: ``resume``). It may save that state (an in-task checkpoint) and may raise to stop the run.
Boundary = loop.Boundary
_NAN_HINT = "lower mist.learning_rate / mist.head_learning_rate or use float32."
__all__ = ["Boundary", "Tuner", "bookkeep", "init_head", "jit_steps", "make_loss_fn",
           "make_optimizer", "make_view_loss_fn", "score", "select", "selection_log", "tune"]


def _train_step(loss_fn: Callable, tx: optax.GradientTransformation) -> Callable:
    """(params, opt_state, batch) -> (params, opt_state, loss, updated fraction), unjitted."""

    def step(params, opt_state, batch):
        loss, grads = jax.value_and_grad(loss_fn)(params, batch)
        updates, opt_state = tx.update(grads, opt_state, params)
        new = optax.apply_updates(params, updates)
        changed = optim.updated_fraction(params["backbone"], new["backbone"])
        return new, opt_state, loss, changed

    return step


def jit_steps(mesh: sharding.MeshContext, loss_fn: Callable, tx: optax.GradientTransformation,
              params: PyTree, init: Callable) -> tuple[PyTree, PyTree, Callable, Callable]:
    """``(param_shardings, opt_shardings, init, step)`` of a tuner on ``mesh``: ``init(params,
    mask, count, frozen, key) -> opt_state`` jitted onto the optimizer state's shardings (from
    ``jax.eval_shape(tx.init, params)``); ``step`` the jitted ``_train_step`` with params and
    optimizer state donated and the loss and updated fraction replicated."""
    param_sh = mesh.shardings(params)
    opt_sh = mesh.shardings(jax.eval_shape(tx.init, params))
    rep = mesh.replicated
    step = jax.jit(_train_step(loss_fn, tx), in_shardings=(param_sh, opt_sh, None),
                   out_shardings=(param_sh, opt_sh, rep, rep), donate_argnums=(0, 1))
    return param_sh, opt_sh, jax.jit(init, out_shardings=opt_sh), step


def make_optimizer(cfg: Any) -> optax.GradientTransformation:
    """``config.mist`` -> the run's ``optim.mist_optimizer`` (no task yet: see ``optim.start_task``).

    Raises: ValueError for a bad sparsity, optimizer name or rate.
    """
    inner = inner_lib.from_config(cfg)
    return optim.mist_optimizer(sparsity=cfg.sparsity, drop_rate=cfg.drop_rate,
                                overlap_decay=cfg.overlap_decay, inner=inner)


class Tuner:
    """MIST's compiled pieces for one run (one compile of each, shared by every task).

    Args:
      loss_fn: from ``make_loss_fn``.
      cfg: ``config.mist`` (selector, select_rate, selection_units, drop_rate, overlap_decay,
        freeze_rate, bookkeeping, sparsity, optimizer, epochs, learning rates, momentum,
        weight_decay, log_every).
      params: the ``{"backbone", "head"}`` pytree to tune (arrays or ShapeDtypeStructs: only
        the structure, shapes and dtypes are used).
      mesh: the ``sharding.MeshContext`` to run on (default: all devices, data parallel).
        Batches must be laid out on it (``MeshContext.put_batch``).
      fish: a ``fish.FishScorer``, needed (only) by ``selector="fish"``.

    Attributes:
      tx: the optimizer (``make_optimizer(cfg)``), created once.
      param_shardings, opt_shardings: NamedSharding pytrees of params and optimizer state.

    Raises:
      ValueError: an unknown ``selection_units``, optimizer or sparsity, a rate out of range,
        or ``selector="fish"`` without ``fish``.
    """

    def __init__(self, loss_fn: Callable, cfg: Any, params: PyTree,
                 mesh: sharding.MeshContext | None = None, fish: Any = None):
        self.loss_fn, self.cfg, self.fish = loss_fn, cfg, fish
        if cfg.selector == "fish" and fish is None:
            raise ValueError('mist.selector="fish" needs Tuner(..., fish=fish.FishScorer(...)).')
        self.mesh = mesh or sharding.MeshContext(sharding.make_mesh())
        if cfg.selection_units not in masks.UNITS:  # fail now, not after task 0's scoring pass
            raise ValueError(f"mist.selection_units must be one of {masks.UNITS}, got "
                             f"{cfg.selection_units!r}.")
        masks.check_rate("mist.freeze_rate", cfg.freeze_rate, low_inclusive=True,
                         usual="0.0 (each unit's maximum, SimpleCIL file) or 0.0005 (RanPAC's)")
        self.tx = make_optimizer(cfg)

        def init(params, mask, count, frozen, key):
            return optim.start_task(self.tx.init(params), params, mask, count, frozen, key)

        self.param_shardings, self.opt_shardings, self.init, self.step = jit_steps(
            self.mesh, loss_fn, self.tx, params, init)
        kind = cfg.selector
        self.score_steps = sensitivity.compile_steps(
            fish.loss_fn if kind == "fish" else loss_fn, 1 if kind == "gradient" else 2,
            self.param_shardings)

    def adapt(self, params: PyTree, state: masks.MistState,
              epoch_batches: Callable[[int, int], Iterable], key: jax.Array,
              on_step: Callable[[dict], None] | None = None,
              at_boundary: Boundary | None = None, resume: dict | None = None,
              task_range: tuple[int, int] | None = None) -> tuple[PyTree, masks.MistState, dict]:
        """Run MIST on one task: ``score`` -> ``select`` -> ``tune`` -> ``bookkeep``.

        Args:
          params: ``{"backbone", "head"}`` float32 pytree (not modified; a new one is returned).
          state: the ``MistState`` (count, frozen) from earlier tasks, shaped like ``params``.
          epoch_batches: ``(epoch, start) -> iterable of (images, labels, key)`` for epoch
            0..E-1 from batch ``start`` on; epoch 0 is the scoring pass (docs/algorithm.md §4:
            it counts as the first of ``cfg.epochs``).
          key: PRNG key (or int seed) of this task's stochastic drop and random selector.
          on_step: optional callback receiving a dict per step (epoch, step, loss, updated_fraction).
          at_boundary: optional ``Boundary``, called after every scoring batch and tuning step.
          resume: the dict a ``Boundary``'s state function returned (restored from an in-task
            checkpoint, numpy arrays): continue from there, bitwise as if never stopped.
          task_range: the task's classes (unused by MIST, whose objective needs no class
            range; the ablation tuners' CE takes it): every tuner takes the same arguments.
        Returns:
          ``(tuned params, new MistState, log)`` with log keys ``mi_loss_per_epoch`` (mean over
          each update epoch), ``selected_fraction`` (selected / total over scored backbone
          tensors), ``updated_fraction`` (mean fraction of backbone elements changed per step),
          ``coverage`` ({selection unit: percent selected}, q/k/v fused as ``.../qkv/kernel``
          under official units), ``block_selected``, ``score_share`` and
          ``overlap_histogram`` (``mask_stats.task_summary``), ``steps``, ``images`` (images of
          the update epochs; each gives two views), ``seconds`` and ``images_per_second`` (all
          epochs, scoring pass included).
        Raises:
          ValueError: a NaN/inf loss (names the epoch and the likely fix).
        """
        del task_range
        cfg, mesh = self.cfg, self.mesh
        resume = resume or {"phase": "score"}
        t0 = time.perf_counter() - float(resume.get("seconds", 0.0))
        params = mesh.place(params)
        state = masks.MistState(*mesh.place(tuple(state)))
        at = at_boundary or (lambda position, get: None)
        if resume["phase"] == "score":
            saved = resume.get("loop")
            scoring = (loop.LoopState(epoch=0) if saved is None else
                       loop.LoopState.restore(saved, params, mesh.place))
            batches = epoch_batches
            if cfg.selector == "fish":  # prototypes, then CE-Fisher
                batches = lambda e, start: self.fish.batches(params["backbone"], epoch_batches,
                                                             epoch_batches(e, start))
            scoring = score(self, params, batches, state.frozen, scoring, at_boundary=lambda
                            pos, get: at(pos, lambda: {"phase": "score", "loop": get(),
                                                       "seconds": time.perf_counter() - t0}))
            scores, images = scoring.carry, scoring.images
            mask, tuning = select(cfg, params, scores, key), None
        else:
            scores, mask = mesh.place(resume["scores"]), mesh.place(resume["mask"])
            images, tuning = int(resume["scoring_images"]), resume["loop"]
        extra = lambda: {"phase": "tune", "scores": scores, "mask": mask,
                         "scoring_images": images, "seconds": time.perf_counter() - t0}
        params, stats = tune(self, params, mask, state, key, epoch_batches, on_step,
                             at_boundary=lambda pos, get: at(pos, lambda: {"loop": get(),
                                                                           **extra()}),
                             resume=tuning)
        log = dict(stats, **selection_log(mask, scores, state.count, cfg.selection_units))
        log["seconds"] = time.perf_counter() - t0
        log["images_per_second"] = (images + stats["images"]) / max(log["seconds"], 1e-9)
        if cfg.bookkeeping:  # False: the dense fine-tuning reference counts and freezes nothing
            state = masks.MistState(*mesh.place(tuple(bookkeep(cfg, state, mask, scores))))
        return params, state, log


def score(tuner: Tuner, params: PyTree, epoch_batches: Callable[[int, int], Iterable],
          frozen: PyTree | None, state: loop.LoopState | None = None,
          at_boundary: Boundary | None = None) -> loop.LoopState:
    """Epoch 1 of MIST: the sensitivity score of every weight (docs/algorithm.md §4), as one
    epoch of ``loop.run_epochs`` whose carry is the running sum.

    The MI-Fisher ``sum_b (dL_b/dw)^2`` (``sensitivity.compile_steps``), ``|dL_b/dw|`` for
    ``selector="gradient"``, or for ``"fish"`` the Fisher score of the prototype classifier's
    cross-entropy (``fish.py``; ``epoch_batches`` then carry the classes and prototypes,
    ``FishScorer.batches``); the other ablation selectors use the MI-Fisher score to freeze.
    ``epoch_batches(0, start)``: (images, labels, key) on the tuner's mesh; ``state``: a
    resumed pass. Returns the loop's final state: ``carry`` holds float32 scores shaped like
    ``params``, laid out like them; ``images`` the images scored.
    Raises: ValueError when there is no batch.
    """
    params = tuner.mesh.place(params)
    step = lambda acc, batch: (sensitivity.add_batch(tuner.score_steps, acc, params, batch,
                                                     frozen), None, None)
    state = loop.run_epochs(step, state or loop.LoopState(epoch=0), epoch_batches, range(1),
                            phase="score", at_boundary=at_boundary)
    sensitivity.nonempty(state.carry)
    return state


def select(cfg: Any, params: PyTree, scores: PyTree, key) -> PyTree:
    """The task's mask: ``masks.select`` with ``config.mist``'s selector, rate and units
    (docs/algorithm.md §5). ``key`` draws the random selector. Returns a bool pytree."""
    return masks.select(cfg.selector, cfg.select_rate, params=params, scores=scores, seed=key,
                        units=cfg.selection_units)


def tune(tuner: Tuner, params: PyTree, mask: PyTree, state: masks.MistState, key,
         epoch_batches: Callable[[int, int], Iterable],
         on_step: Callable[[dict], None] | None = None,
         at_boundary: Boundary | None = None, resume: dict | None = None,
         first_epoch: int = 1) -> tuple[PyTree, dict]:
    """Epochs 2..E of MIST: sparse tuning of the masked weights with the MI loss
    (docs/algorithm.md §6-7), through ``loop.run_epochs``. ``state`` gives the counts
    (damping) and frozen weights. ``first_epoch``: the first update epoch (1: epoch 0 was the
    scoring pass; 0 for the ``ablations`` procedures, which have none).

    ``at_boundary`` is called after each step with ``{"phase": "tune", "epoch": e, "batch":
    b}`` and the loop's snapshot; given back as ``resume``, the loop continues from there
    bitwise. ``on_step`` gets ``{"epoch", "step", "mi_loss", "updated_fraction"}`` every
    ``log_every`` steps.
    Returns ``(tuned params, {"mi_loss_per_epoch", "updated_fraction", "steps", "images"})``;
    ``params`` is copied, not donated.
    Raises: ValueError on a NaN/inf epoch loss.
    """
    cfg, mesh = tuner.cfg, tuner.mesh
    params = mesh.place(jax.tree.map(jnp.array, params))  # a private copy: the step donates it
    carry = (params, tuner.init(params, mask, state.count, state.frozen, key))
    place = lambda c: (mesh.place(c[0]), jax.device_put(c[1], tuner.opt_shardings))
    run = (loop.LoopState(epoch=first_epoch, carry=carry) if resume is None else
           loop.LoopState.restore(resume, carry, place))

    def step(carry, batch):
        params, opt_state, loss, frac = tuner.step(*carry, batch)
        return (params, opt_state), loss, frac

    def log(run, loss, frac):
        if on_step is not None and run.steps % max(cfg.log_every, 1) == 0:
            on_step({"epoch": run.epoch, "step": run.steps, "mi_loss": float(loss),
                     "updated_fraction": float(frac)})

    run = loop.run_epochs(step, run, epoch_batches, range(first_epoch, cfg.epochs),
                          phase="tune", at_boundary=at_boundary, on_step=log,
                          nan_hint=_NAN_HINT)
    frac = float(np.mean(jax.device_get(run.aux))) if run.aux else 0.0
    return run.carry[0], {"mi_loss_per_epoch": run.losses, "updated_fraction": frac,
                          "steps": run.steps, "images": run.images}


def bookkeep(cfg: Any, state: masks.MistState, mask: PyTree, scores: PyTree) -> masks.MistState:
    """After the task (docs/algorithm.md §8): counts += mask, freeze the top ``freeze_rate``."""
    return masks.update_after_task(state, mask, scores, cfg.freeze_rate,
                                   units=cfg.selection_units)


def selection_log(mask: PyTree, scores: PyTree, count: PyTree, units: str) -> dict:
    """JSON-ready description of a task's selection over the scored backbone tensors:
    ``selected_fraction``, ``coverage`` (percent per unit) and ``mask_stats.task_summary``."""
    report = mask_stats.coverage(mask, units)
    scored = {k: v for k, v in report.items() if k.startswith("backbone/")}
    return {"selected_fraction": mask_stats.overall_fraction(scored, masks.DEFAULT_EXEMPT),
            "coverage": {k: 100.0 * s / t for k, (s, t) in scored.items()},
            **mask_stats.task_summary(mask, scores, count)}
