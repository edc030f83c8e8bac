"""MIST, the method alone: pure functions and optax transforms, no I/O (arXiv 2505.19943).

MIST in your own training loop (README, "MIST in your own loop", run by tests/test_readme.py)::

  loss_fn = mist.make_loss_fn(model, preprocess)                 # MI loss on two views
  scores = mist.fisher_scores(loss_fn, params, batches)          # sum of squared gradients
  mask = mist.select_top(scores, 0.1)                            # top 10% per weight tensor
  state = mist.init_mist_state(params)                           # counts, frozen
  tx = mist.mist_optimizer(drop_rate=0.9, overlap_decay=0.9)     # sparse_tuning, then SGD
  opt_state = mist.start_task(tx.init(params), params, mask, state.count, state.frozen, 0)
  ...  # your steps: tx.update(grads, opt_state, params)
  state = mist.update_after_task(state, mask, scores)

Modules: ``objectives`` (the MI loss), ``augment`` (the two views), ``sensitivity`` (scores),
``masks`` (selection, exemptions, freezing), ``drop`` (the stochastic drop), ``optim`` (the
sparse-tuning chain), ``fish`` (the FISH selector), ``ablations`` (the authors' spr
procedures), ``mask_stats`` (what a selection covers), ``tuner`` (one task's adaptation,
compiled once per run).
"""

from mist_jax.mist import (ablations, augment, drop, fish, inner, mask_stats, masks, objectives,
                           optim, sensitivity, tuner)
from mist_jax.mist.masks import MistState, init_mist_state, update_after_task
from mist_jax.mist.masks import select_top
from mist_jax.mist.objectives import supervised_nt_xent
from mist_jax.mist.inner import inner_optimizer
from mist_jax.mist.optim import mist_optimizer, sparse_tuning, start_task
from mist_jax.mist.sensitivity import fisher_scores
from mist_jax.mist.tuner import (Boundary, Tuner, bookkeep, init_head, make_loss_fn,
                                 make_view_loss_fn, score, select, selection_log, tune)

__all__ = ["Boundary", "MistState", "Tuner", "ablations", "augment", "bookkeep", "drop",
           "fish", "fisher_scores", "init_head", "init_mist_state", "inner", "inner_optimizer",
           "make_loss_fn", "make_view_loss_fn", "mask_stats", "masks", "mist_optimizer", "objectives", "optim", "score", "select", "selection_log",
           "select_top", "sensitivity", "sparse_tuning", "start_task", "supervised_nt_xent", "tune",
           "tuner", "update_after_task"]
