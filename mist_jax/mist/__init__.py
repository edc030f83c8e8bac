"""MIST, the method alone: pure functions and optax transforms, no I/O (arXiv 2505.19943).

MIST in your own training loop (README, "MIST in your own loop")::

  from mist_jax import mist
  scores = mist.fisher_scores(loss_fn, params, batches)          # Eq. (5): sum of g**2
  mask = mist.select_top(scores, 0.1)                # top 10% per unit
  tx = mist.sparse_tuning(drop_rate=0.9, overlap_decay=0.9)       # then chain optax SGD
  opt_state = mist.start_task(tx.init(params), params, mask, count, frozen, key)

Modules: ``objectives`` (the MI loss), ``augment`` (the two views), ``sensitivity`` (scores),
``masks`` (selection, exemptions, freezing), ``drop`` (the stochastic drop), ``optim`` (the
sparse-tuning chain), ``fish`` (the FISH selector), ``ablations`` (the authors' spr
procedures), ``mask_stats`` (what a selection covers), ``tuner`` (one task's adaptation,
compiled once per run).
"""

from mist_jax.mist import (ablations, augment, drop, fish, mask_stats, masks, objectives, optim,
                           sensitivity, tuner)
from mist_jax.mist.masks import MistState, init_mist_state, update_after_task
from mist_jax.mist.masks import select_top
from mist_jax.mist.objectives import supervised_nt_xent
from mist_jax.mist.optim import inner_optimizer, mist_optimizer, sparse_tuning, start_task
from mist_jax.mist.sensitivity import fisher_scores
from mist_jax.mist.tuner import (Boundary, Tuner, bookkeep, init_head, make_loss_fn,
                                 make_view_loss_fn, score, select, selection_log, tune)

__all__ = ["Boundary", "MistState", "Tuner", "ablations", "augment", "bookkeep", "drop",
           "fish", "fisher_scores", "init_head", "init_mist_state", "inner_optimizer",
           "make_loss_fn", "make_view_loss_fn", "mask_stats", "masks", "mist_optimizer", "objectives", "optim", "score", "select", "selection_log",
           "select_top", "sensitivity", "sparse_tuning", "start_task", "supervised_nt_xent", "tune",
           "tuner", "update_after_task"]
