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
from typing import Any, Callable, Iterable, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from mist_jax.mist import augment, mask_stats, masks, objectives, optim, sensitivity
from mist_jax.infra import sharding, trees

PyTree = Any
#: ``at_boundary(position, state)``: called at every step boundary of an adaptation with
#: ``position = {"phase", "epoch", "batch"}`` (batches of that epoch done) and a function
#: returning what is needed to continue from there (arrays and numbers; ``Tuner.adapt``'s
#: ``resume``). It may save that state (an in-task checkpoint) and may raise to stop the run.
Boundary = Callable[[dict, Callable[[], dict]], None]


def make_view_loss_fn(model: nn.Module, preprocess: Callable, objective: str = "mi",
                      temperature: float = 0.07, out_dim: int = 128) -> Callable:
    """The MI loss on given views: ``loss(params, (views, labels)) -> float32 scalar``.

    ``params = {"backbone": ViT params, "head": Dense(out_dim) params}``; ``views`` float32
    [2B, S, S, 3] is [x; x2] (the batch, then its second views, as the official
    ``torch.cat((inputs, simclr_aug(inputs)))``), ``labels`` int32[B]. The views go through
    ``preprocess``, the backbone and the projection head; ``mi``/``supcon`` take the
    L2-normalised projections (docs/algorithm.md §2, code ``Supervised_NT_xent_n``), ``ce`` takes the
    head's output as logits over ``out_dim`` classes. Used directly where the views are given
    (golden parity tests); ``make_loss_fn`` draws them.
    """
    head = nn.Dense(out_dim)
    loss = objectives.get_objective(objective)

    def loss_fn(params, batch):
        views, labels = batch
        feats = model.apply({"params": params["backbone"]}, preprocess(views))
        out = head.apply({"params": params["head"]}, feats)
        if objective == "ce":
            return loss(out, jnp.concatenate([labels, labels]))
        return loss(objectives.l2_normalize(out), labels, temperature)

    return loss_fn


def make_loss_fn(model: nn.Module, preprocess: Callable, objective: str = "mi",
                 temperature: float = 0.07, out_dim: int = 128) -> Callable:
    """The MI training loss ``loss(params, batch) -> float32 scalar`` (docs/algorithm.md §2).

    ``batch = (images float32[B, S, S, 3], labels int32[B], key)``: the second views are drawn
    from ``key`` (``augment.two_views``), then ``make_view_loss_fn``'s loss is applied.
    """
    on_views = make_view_loss_fn(model, preprocess, objective, temperature, out_dim)

    def loss_fn(params, batch):
        images, labels, key = batch
        return on_views(params, (augment.two_views(key, images), labels))

    return loss_fn


def init_head(key: jax.Array, feature_dim: int, out_dim: int) -> PyTree:
    """Projection head Dense(out_dim) params, kept across tasks (code ``SimpleVitNet.simclr``).

    PyTorch ``nn.Linear``'s default init, as the official head: kernel float32[feature_dim,
    out_dim] and bias float32[out_dim], both uniform in +-1/sqrt(feature_dim).
    """
    bound = 1.0 / np.sqrt(feature_dim)
    kernel_init = nn.initializers.variance_scaling(1 / 3, "fan_in", "uniform")  # +-1/sqrt(in)
    bias_init = lambda k, shape, dtype=jnp.float32: jax.random.uniform(k, shape, dtype, -bound,
                                                                       bound)
    dense = nn.Dense(out_dim, kernel_init=kernel_init, bias_init=bias_init)
    return dense.init(key, jnp.zeros((1, feature_dim)))["params"]


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
    inner = optim.inner_optimizer(cfg.optimizer, cfg.learning_rate, cfg.momentum,
                                  cfg.weight_decay, cfg.head_learning_rate)
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
        if getattr(cfg, "selector", "fisher") == "fish" and fish is None:
            raise ValueError('mist.selector="fish" needs Tuner(..., fish=fish.FishScorer(...)).')
        self.mesh = mesh or sharding.MeshContext(sharding.make_mesh())
        if cfg.selection_units not in masks.UNITS:  # fail now, not after task 0's scoring pass
            raise ValueError(f"mist.selection_units must be one of {masks.UNITS}, got "
                             f"{cfg.selection_units!r}.")
        if not 0.0 <= cfg.freeze_rate <= 1.0:
            raise ValueError(f"mist.freeze_rate must be in [0, 1], got {cfg.freeze_rate}; 0.0 "
                             "freezes each unit's maximum (SimpleCIL file), 0.0005 is RanPAC's.")
        self.tx = make_optimizer(cfg)

        def init(params, mask, count, frozen, key):
            return optim.start_task(self.tx.init(params), params, mask, count, frozen, key)

        self.param_shardings, self.opt_shardings, self.init, self.step = jit_steps(
            self.mesh, loss_fn, self.tx, params, init)
        kind = getattr(cfg, "selector", "fisher")
        self.score_steps = sensitivity.compile_steps(
            fish.loss_fn if kind == "fish" else loss_fn, 1 if kind == "gradient" else 2,
            self.param_shardings)

    def adapt(self, params: PyTree, state: masks.MistState,
              epoch_batches: Callable[[int, int], Iterable], key: jax.Array,
              on_step: Callable[[dict], None] | None = None,
              at_boundary: Boundary | None = None, resume: dict | None = None
              ) -> tuple[PyTree, masks.MistState, dict]:
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
        cfg, mesh = self.cfg, self.mesh
        resume = resume or {"phase": "score", "batch": 0}
        t0 = time.perf_counter() - float(resume.get("seconds", 0.0))
        params = mesh.place(params)
        state = masks.MistState(*mesh.place(tuple(state)))
        at = at_boundary or (lambda position, get: None)
        seen = {"batch": int(resume["batch"]), "images": int(resume.get("scoring_images", 0))}
        if resume["phase"] == "score":
            def counted():
                for b in epoch_batches(0, seen["batch"]):
                    seen["images"] += len(b[1])
                    yield b

            def on_batch(acc):
                seen["batch"] += 1
                at({"phase": "score", "epoch": 0, "batch": seen["batch"]},
                   lambda: {"phase": "score", "batch": seen["batch"], "scores": acc,
                            "scoring_images": seen["images"],
                            "seconds": time.perf_counter() - t0})

            init = None if resume.get("scores") is None else mesh.place(resume["scores"])
            batches = counted()
            if getattr(cfg, "selector", "fisher") == "fish":  # prototypes, then CE-Fisher
                batches = self.fish.batches(params["backbone"], epoch_batches, batches)
            scores = score(self, params, batches, state.frozen, init=init, on_batch=on_batch)
            mask, tuning = select(cfg, params, scores, key), None
        else:
            scores, mask = mesh.place(resume["scores"]), mesh.place(resume["mask"])
            tuning = resume
        extra = lambda: {"phase": "tune", "scores": scores, "mask": mask,
                         "scoring_images": seen["images"], "seconds": time.perf_counter() - t0}
        params, stats = tune(self, params, mask, state, key, epoch_batches, on_step,
                             at_boundary=lambda pos, get: at(pos, lambda: {**get(), **extra()}),
                             resume=tuning)
        log = dict(stats, **selection_log(mask, scores, state.count, cfg.selection_units))
        log["seconds"] = time.perf_counter() - t0
        log["images_per_second"] = (seen["images"] + stats["images"]) / max(log["seconds"], 1e-9)
        if cfg.bookkeeping:  # False: the dense fine-tuning reference counts and freezes nothing
            state = masks.MistState(*mesh.place(tuple(bookkeep(cfg, state, mask, scores))))
        return params, state, log


def score(tuner: Tuner, params: PyTree, batches: Iterable, frozen: PyTree | None,
          init: PyTree | None = None, on_batch: Callable[[PyTree], None] | None = None) -> PyTree:
    """Epoch 1 of MIST: the sensitivity score of every weight (docs/algorithm.md §4).

    ``sensitivity.gradient_scores`` for ``selector="gradient"``; for ``"fish"`` the Fisher
    score of the prototype classifier's cross-entropy (``fish.py``; ``batches`` then carry the
    classes and prototypes, ``FishScorer.batches``); else the MI-Fisher
    ``sensitivity.fisher_scores`` (also the freezing score of the other ablation selectors).
    ``batches``: (images, labels, key) on the tuner's mesh; ``init`` / ``on_batch``: the sum
    of a resumed pass / a callback per batch (``sensitivity.fisher_scores``). Returns float32
    scores shaped like ``params``, laid out like them. Raises ValueError on empty batches.
    """
    kind = getattr(tuner.cfg, "selector", "fisher")
    fn = sensitivity.gradient_scores if kind == "gradient" else sensitivity.fisher_scores
    return fn(None, tuner.mesh.place(params), batches, frozen=frozen, init=init,
              on_batch=on_batch, steps=tuner.score_steps)


def select(cfg: Any, params: PyTree, scores: PyTree, key) -> PyTree:
    """The task's mask: ``masks.select`` with ``config.mist``'s selector, rate and units
    (docs/algorithm.md §5). ``key`` draws the random selector. Returns a bool pytree."""
    return masks.select(cfg.selector, cfg.select_rate, params=params, scores=scores, seed=key,
                        units=cfg.selection_units)


class TuneStats(NamedTuple):
    """Per-task numbers of ``tune``: see ``Tuner.adapt``'s log."""

    mi_loss_per_epoch: list
    updated_fraction: float
    steps: int
    images: int


def tune(tuner: Tuner, params: PyTree, mask: PyTree, state: masks.MistState, key,
         epoch_batches: Callable[[int, int], Iterable],
         on_step: Callable[[dict], None] | None = None,
         at_boundary: Boundary | None = None, resume: dict | None = None,
         first_epoch: int = 1) -> tuple[PyTree, dict]:
    """Epochs 2..E of MIST: sparse tuning of the masked weights with the MI loss
    (docs/algorithm.md §6-7). ``state`` gives the counts (damping) and frozen weights.
    ``first_epoch``: the first update epoch (1: epoch 0 was the scoring pass; 0 for the
    ``spr`` procedures, which have none).

    ``at_boundary`` is called after each step with ``{"phase": "tune", "epoch": e, "batch":
    b}`` (b steps of epoch e done) and a function returning the loop's state (``params``,
    ``opt_state`` as ``trees.leaf_dict``, the losses and counters); given back as ``resume``,
    the loop continues from there bitwise.
    Returns ``(tuned params, TuneStats as a dict)``; ``params`` is copied, not donated.
    Raises: ValueError on a NaN/inf epoch loss.
    """
    cfg = tuner.cfg
    params = tuner.mesh.place(jax.tree.map(jnp.array, params))  # a private copy: the step donates it
    opt_state = tuner.init(params, mask, state.count, state.frozen, key)
    losses, changed, images, steps, epoch_losses = [], [], 0, 0, []
    epoch0, batch0 = first_epoch, 0
    if resume is not None:
        params = tuner.mesh.place(resume["params"])
        opt_state = jax.device_put(trees.from_leaf_dict(opt_state, resume["opt_state"]),
                                   tuner.opt_shardings)
        losses = [float(x) for x in np.asarray(resume["losses"]).reshape(-1)]
        changed = list(np.asarray(resume["changed"]).reshape(-1))
        epoch_losses = list(np.asarray(resume["epoch_losses"]).reshape(-1))
        images, steps = int(resume["images"]), int(resume["steps"])
        epoch0, batch0 = int(resume["epoch"]), int(resume["batch"])
    for epoch in range(epoch0, cfg.epochs):
        start = batch0 if epoch == epoch0 else 0
        epoch_losses = epoch_losses if epoch == epoch0 else []
        for b, batch in enumerate(epoch_batches(epoch, start), start=start + 1):
            params, opt_state, loss, frac = tuner.step(params, opt_state, batch)
            epoch_losses.append(loss)
            changed.append(frac)
            images += len(batch[1])
            steps += 1
            if on_step is not None and steps % max(cfg.log_every, 1) == 0:
                on_step({"epoch": epoch, "step": steps, "mi_loss": float(loss),
                         "updated_fraction": float(frac)})
            if at_boundary is not None:
                at_boundary({"phase": "tune", "epoch": epoch, "batch": b}, lambda: {
                    "params": params, "opt_state": trees.leaf_dict(opt_state),
                    "losses": np.asarray(losses, np.float64).reshape(-1),
                    "epoch_losses": np.asarray(jax.device_get(epoch_losses), np.float32),
                    "changed": np.asarray(jax.device_get(changed), np.float32),
                    "images": images, "steps": steps, "epoch": epoch, "batch": b})
        mean = float(np.mean(jax.device_get(epoch_losses))) if epoch_losses else float("nan")
        if epoch_losses and not np.isfinite(mean):
            raise ValueError(f"MIST loss became {mean} in epoch {epoch}; lower "
                             "mist.learning_rate / mist.head_learning_rate or use float32.")
        losses.append(mean)
    frac = float(np.mean(jax.device_get(changed))) if changed else 0.0
    return params, TuneStats(losses, frac, steps, images)._asdict()


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
