"""One MIST adaptation of the backbone on one task (docs/algorithm.md §1; code models/*_mist.py `_mist_run`).

score (epoch 1, no update) -> select -> sparse-tune with the MI loss (epochs 2..E) -> bookkeeping.
The learner-independent piece the runner calls before each learner's fit; the original code
copies this loop into every learner, here it is written once. With a ``MeshContext``
(mist_jax/sharding.py) both passes are ``jax.jit``-ed with explicit in/out shardings: batches
split over the devices, params / scores / masks / optimizer state replicated or FSDP-sharded,
params and optimizer state donated; nothing leaves the device between steps.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Iterable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from mist_jax import augment, masks, objectives, optim, sensitivity, sharding

PyTree = Any


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


def _optimizer(cfg: Any, seed: int, mask=None, count=None, frozen=None):
    """``config.mist`` -> ``optim.mist_optimizer`` for one task."""
    return optim.mist_optimizer(
        mask, count, frozen, sparsity=cfg.sparsity, drop_rate=cfg.drop_rate,
        overlap_decay=cfg.overlap_decay, seed=seed, learning_rate=cfg.learning_rate,
        momentum=cfg.momentum, weight_decay=cfg.weight_decay,
        head_learning_rate=cfg.head_learning_rate)


class Adapter:
    """MIST for a whole run: compiles the scoring and tuning steps once, adapts per task.

    The masks, counts and frozen flags live in the optimizer state (arrays), so one compiled
    train step serves every task; only ``init`` differs between tasks.

    Args:
      loss_fn: from ``make_loss_fn``.
      cfg: ``config.mist`` (selector, select_rate, selection_units, drop_rate, overlap_decay,
        freeze_rate, bookkeeping, sparsity, epochs, learning rates, momentum, weight_decay,
        log_every).
      mesh: the ``sharding.MeshContext`` to run on (default: all devices, data parallel).
        ``adapt``'s batches must be laid out on it (``MeshContext.put_batch``).

    Raises:
      ValueError: an unknown ``selection_units`` or a ``freeze_rate`` outside [0, 1].
    """

    def __init__(self, loss_fn: Callable, cfg: Any, mesh: sharding.MeshContext | None = None):
        self.loss_fn, self.cfg = loss_fn, cfg
        self.mesh = mesh or sharding.MeshContext(sharding.make_mesh())
        if cfg.selection_units not in masks.UNITS:  # fail now, not after task 0's scoring pass
            raise ValueError(f"mist.selection_units must be one of {masks.UNITS}, got "
                             f"{cfg.selection_units!r}.")
        if not 0.0 <= cfg.freeze_rate <= 1.0:
            raise ValueError(f"mist.freeze_rate must be in [0, 1], got {cfg.freeze_rate}; 0.0 "
                             "freezes each unit's maximum (SimpleCIL file), 0.0005 is RanPAC's.")
        self._step = _train_step(loss_fn, _optimizer(cfg, 0))
        self._compiled: dict = {}

    def _step_fn(self, params: PyTree, opt_state: PyTree) -> Callable:
        """The jitted step for this layout (one compile per distinct optimizer-state shape)."""
        p_sh, o_sh = self.mesh.shardings(params), self.mesh.shardings(opt_state)
        leaves, treedef = jax.tree.flatten((p_sh, o_sh))
        key = (treedef, tuple(leaves), tuple(np.shape(x) for x in jax.tree.leaves(opt_state)))
        if key not in self._compiled:
            rep = self.mesh.replicated
            self._compiled = {key: jax.jit(self._step, in_shardings=(p_sh, o_sh, None),
                                           out_shardings=(p_sh, o_sh, rep, rep),
                                           donate_argnums=(0, 1))}
        return self._compiled[key]

    def adapt(self, params: PyTree, state: masks.MistState,
              epoch_batches: Callable[[int], Iterable], seed: int | jax.Array,
              on_step: Callable[[dict], None] | None = None
              ) -> tuple[PyTree, masks.MistState, dict]:
        """Run MIST on one task.

        Args:
          params: ``{"backbone", "head"}`` float32 pytree (not modified; a new one is returned).
          state: the ``MistState`` (count, frozen) from earlier tasks, shaped like ``params``.
          epoch_batches: ``epoch -> iterable of (images, labels, key)`` for epoch 0..E-1; epoch 0
            is the scoring pass (docs/algorithm.md §4: it counts as the first of ``cfg.epochs``).
          seed: int seed or PRNG key of this task's stochastic drop and random selector.
          on_step: optional callback receiving a dict per step (epoch, step, loss, updated_fraction).
        Returns:
          ``(tuned params, new MistState, log)`` with log keys ``mi_loss_per_epoch`` (mean over
          each update epoch), ``selected_fraction`` (selected / total over scored backbone
          tensors), ``updated_fraction`` (mean fraction of backbone elements changed per step),
          ``coverage`` ({selection unit: percent selected}, q/k/v fused as ``.../qkv/kernel``
          under official units), ``block_selected``, ``score_share`` and
          ``overlap_histogram`` (``masks.task_summary``), ``steps``, ``images`` (images of the update
          epochs; each gives two views), ``seconds`` and ``images_per_second`` (all epochs,
          scoring pass included).
        Raises:
          ValueError: a NaN/inf loss (names the epoch and the likely fix).
        """
        cfg, loss_fn, mesh = self.cfg, self.loss_fn, self.mesh
        t0 = time.perf_counter()
        params = mesh.place(params)
        state = masks.MistState(*mesh.place(tuple(state)))
        score_fn = sensitivity.gradient_scores if cfg.selector == "gradient" else sensitivity.fisher_scores
        scoring_images = []
        counted = (scoring_images.append(len(b[1])) or b for b in epoch_batches(0))
        scores = score_fn(loss_fn, params, counted, frozen=state.frozen,
                          shardings=mesh.shardings(params))
        units = cfg.selection_units
        mask = masks.select(cfg.selector, cfg.select_rate, params=params, scores=scores,
                            seed=seed, units=units)
        tx = _optimizer(cfg, seed, mask, state.count, state.frozen)
        params = mesh.place(jax.tree.map(jnp.array, params))  # a private copy: the step donates it
        opt_state = mesh.place(tx.init(params))
        step_fn = self._step_fn(params, opt_state)  # same update rule; this task's masks are in opt_state
        losses, changed, images, steps = [], [], 0, 0
        for epoch in range(1, cfg.epochs):
            epoch_losses = []
            for batch in epoch_batches(epoch):
                params, opt_state, loss, frac = step_fn(params, opt_state, batch)
                epoch_losses.append(loss)
                changed.append(frac)
                images += len(batch[1])
                steps += 1
                if on_step is not None and steps % max(cfg.log_every, 1) == 0:
                    on_step({"epoch": epoch, "step": steps, "mi_loss": float(loss),
                             "updated_fraction": float(frac)})
            mean = float(np.mean(jax.device_get(epoch_losses))) if epoch_losses else float("nan")
            if epoch_losses and not np.isfinite(mean):
                raise ValueError(f"MIST loss became {mean} in epoch {epoch}; lower "
                                 "mist.learning_rate / mist.head_learning_rate or use float32.")
            losses.append(mean)
        backbone_scored = lambda k: k.startswith("backbone/")
        report = masks.coverage(mask, units)
        scored = {k: v for k, v in report.items() if backbone_scored(k)}
        log = {
            "mi_loss_per_epoch": losses,
            "selected_fraction": masks.overall_fraction(scored, masks.DEFAULT_EXEMPT),
            "updated_fraction": float(np.mean(jax.device_get(changed))) if changed else 0.0,
            "coverage": {k: 100.0 * s / t for k, (s, t) in scored.items()},
            **masks.task_summary(mask, scores, state.count),
            "steps": steps,
            "images": images,
            "seconds": time.perf_counter() - t0,
        }
        log["images_per_second"] = (sum(scoring_images) + images) / max(log["seconds"], 1e-9)
        if cfg.bookkeeping:  # False: the dense fine-tuning reference counts and freezes nothing
            state = masks.MistState(*mesh.place(tuple(
                masks.update_after_task(state, mask, scores, cfg.freeze_rate, units=units))))
        return params, state, log
