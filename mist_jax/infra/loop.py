"""The one resumable epoch loop. MIST's scoring pass and tuning epochs (``mist.tuner``), the
authors' ablation procedures (``mist.ablations``) and every image learner's training epochs
(``learners.images``) run through ``run_epochs``; each brings its own jitted step.

A loop stops only at step boundaries. At each one it calls ``at_boundary(position, snapshot)``:
``position = {"phase", "epoch", "batch"}`` (batches of that epoch done) and ``snapshot()``
returns the loop's state as arrays and numbers (``LoopState.saved``), which the runner writes
as an in-task checkpoint and may stop after. ``LoopState.restore`` turns such a snapshot back
into a state to pass as ``resume``: the loop then continues bitwise as if never stopped.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import jax
import numpy as np

from mist_jax.infra import trees

PyTree = Any
#: ``step(carry, batch) -> (carry, loss, aux)``: one jitted update; ``loss`` a float32 scalar
#: (None: nothing to average, e.g. a scoring pass), ``aux`` a per-step value to keep (or None).
Step = Callable[[PyTree, Any], tuple[PyTree, Any, Any]]
#: ``at_boundary(position, snapshot)``: see the module docstring.
Boundary = Callable[[dict, Callable[[], dict]], None]


@dataclasses.dataclass
class LoopState:
    """Where a loop is and what it has accumulated.

    Attributes:
      epoch, batch: the epoch in progress and the batches of it done.
      carry: the step's carry (e.g. ``(params, opt_state)``, or a running score sum).
      losses: mean loss of each finished epoch (float).
      epoch_losses: the losses of the epoch in progress (device scalars).
      aux: every step's ``aux`` (e.g. the fraction of weights a MIST step changed).
      images, steps: images (rows of ``batch[1]``) and steps done over all epochs.
    """

    epoch: int
    batch: int = 0
    carry: PyTree = None
    losses: list = dataclasses.field(default_factory=list)
    epoch_losses: list = dataclasses.field(default_factory=list)
    aux: list = dataclasses.field(default_factory=list)
    images: int = 0
    steps: int = 0

    def saved(self) -> dict:
        """Arrays and numbers for a checkpoint (``restore`` inverts it)."""
        return {"carry": trees.leaf_dict(self.carry),
                "losses": np.asarray(self.losses, np.float64).reshape(-1),
                "epoch_losses": np.asarray(jax.device_get(self.epoch_losses), np.float32),
                "aux": np.asarray(jax.device_get(self.aux), np.float32),
                "images": self.images, "steps": self.steps, "epoch": self.epoch,
                "batch": self.batch}

    @classmethod
    def restore(cls, saved: dict, template: PyTree,
                place: Callable[[PyTree], PyTree] = lambda c: c) -> "LoopState":
        """The state ``saved`` (``saved()``'s dict, read back as numpy) with its carry in
        ``template``'s structure, laid out by ``place``. Raises ValueError for a carry of
        another structure (``trees.from_leaf_dict``)."""
        return cls(epoch=int(saved["epoch"]), batch=int(saved["batch"]),
                   carry=place(trees.from_leaf_dict(template, saved["carry"])),
                   losses=[float(x) for x in np.asarray(saved["losses"]).reshape(-1)],
                   epoch_losses=list(np.asarray(saved["epoch_losses"]).reshape(-1)),
                   aux=list(np.asarray(saved["aux"]).reshape(-1)),
                   images=int(saved["images"]), steps=int(saved["steps"]))


def run_epochs(step: Step, state: LoopState, epoch_batches: Callable[[int, int], Iterable],
               epochs: Sequence[int] | range, *, phase: str,
               at_boundary: Boundary | None = None,
               on_step: Callable[[LoopState, Any, Any], None] | None = None,
               nan_hint: str = "", empty_loss: float = float("nan")) -> LoopState:
    """Run ``step`` over ``epoch_batches(epoch, start)`` for each epoch of ``epochs`` from
    ``state`` (a fresh ``LoopState(epoch=epochs[0], carry=...)`` or a restored one).

    Args:
      step: see ``Step``.
      state: where to start; its ``epoch`` must be in ``epochs`` (or past them: nothing runs).
      epoch_batches: ``(epoch, start) -> iterable of batches`` from batch ``start`` on.
      epochs: the epochs of this loop, consecutive (e.g. ``range(1, E)``).
      phase: the name positions carry (``"score"``, ``"tune"``, ``"learner"``).
      at_boundary: called after every step (module docstring).
      on_step: ``on_step(state, loss, aux)`` after every step (e.g. a log line).
      nan_hint: the fix a NaN/inf epoch loss error names.
      empty_loss: the mean recorded for an epoch without losses.
    Returns:
      the final ``LoopState``.
    Raises:
      ValueError: an epoch's mean loss is NaN or inf (names the epoch and ``nan_hint``).
    """
    first = state.epoch
    for epoch in (e for e in epochs if e >= first):
        if epoch != first:
            state.epoch, state.batch, state.epoch_losses = epoch, 0, []
        for batch in epoch_batches(epoch, state.batch):
            state.carry, loss, aux = step(state.carry, batch)
            # The step's own time ends here, not inside the next batch's wait (the runner's
            # timing: runner/inputs.py); the values are the same either way.
            jax.block_until_ready((state.carry, loss))
            state.batch += 1
            state.steps += 1
            state.images += len(batch[1])
            if loss is not None:
                state.epoch_losses.append(loss)
            if aux is not None:
                state.aux.append(aux)
            if on_step is not None:
                on_step(state, loss, aux)
            if at_boundary is not None:
                at_boundary({"phase": phase, "epoch": epoch, "batch": state.batch}, state.saved)
        if state.epoch_losses:
            mean = float(np.mean(jax.device_get(state.epoch_losses)))
            if not np.isfinite(mean):
                raise ValueError(f"The {phase} loss became {mean} in epoch {epoch}; {nan_hint}")
        else:
            mean = empty_loss
        state.losses.append(mean)
    return state
