"""Learners that train a pytree of their own through the frozen backbone (``ImageLearner``).

Prompt-, prefix- and adapter-based learners (L2P, DualPrompt, CODA-Prompt, APER, EASE) keep the
pre-trained backbone frozen (MIST may have tuned it before the task) and train extra parameters
on augmented images, using the ViT's extension points (``mist_jax.models.extensions``). Such a
learner states its loss and its classifier as pure functions; ``fit_on_images`` is the one
training loop for all of them, so a new learner is one file: a ``flax.struct`` state with a
``params`` field, ``init``, ``loss``, ``logits`` and a config block with ``epochs``,
``batch_size`` and ``learning_rate`` (tests/support/prompt_learner.py is a 40-line example).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mist_jax.infra import loop
from mist_jax.infra.programs import Program
from mist_jax.learners.base import Learner

PyTree = Any
_RUN_FIELDS = ("num_classes", "num_tasks", "model", "preprocess")


@dataclasses.dataclass(frozen=True, kw_only=True)
class ImageLearner(Learner):
    """Base of image learners. Subclasses are frozen dataclasses and implement

    * ``init(key, feature_dim) -> state``: a ``flax.struct`` dataclass with a ``params`` field
      (the trainable pytree) and anything else the learner keeps (checkpointed with it);
    * ``loss(params, state, backbone, images, labels, task_range) -> float32 scalar``: pure
      and jit-able; images float32[B, S, S, 3] (train transform, not yet preprocessed),
      labels int32[B], task_range int32[2] = (start, end) of the task's classes;
    * ``logits(state, backbone, images) -> float32[N, >= num_seen]``: pure and jit-able;
    * optionally ``end_task(state, task_range) -> state``, ``optimizer(steps_per_epoch)``
      and ``train_epochs(task_range)`` (epochs on that task; default ``epochs``; APER trains
      on the first task only).

    Two switches of ``learn_task`` (class attributes; the runner never reads them):

    * ``embeds``: after the task's epochs and ``end_task``, ``embed(state, backbone, images)
      -> float32[N, F]`` (pure, jit-able) runs on the task's training images with the test
      transform and ``fit_features(state, features, labels, task_range) -> state`` takes them
      (prototype classifiers: APER, EASE; SLCA's class statistics);
    * ``needs_key`` (a property): each training batch also carries a PRNG key (seed sequence
      ``(seed, "learner_dropout", task, epoch)`` folded with the batch index), passed as
      ``loss(..., key=key)`` (APER / EASE adapter dropout);
    * ``trains_backbone``: the loop trains ``{"params": state.params, "backbone": backbone}``
      (``optimizer`` gets that tree; ``loss`` gets the backbone being trained) and hands the
      trained backbone back (``task.replace_backbone``: SLCA's slow learner). MIST, when
      enabled, still tunes the backbone before the learner on every task.

    Fields: ``epochs`` and ``batch_size`` of the per-task loop, ``learning_rate`` of the
    default optimizer (optax.adam), ``drop_last`` (leave out each epoch's last partial batch,
    as GT-RIPL/CODA-Prompt's loader; default False, as LAMDA-PILOT's), and the run's
    ``num_classes``, ``num_tasks`` (0: not known), ViT ``model`` and pixel ``preprocess``
    (passed by ``from_config``; not config keys).
    """

    embeds: ClassVar[bool] = False
    trains_backbone: ClassVar[bool] = False
    epochs: int = 1
    batch_size: int = 32
    learning_rate: float = 1e-3
    drop_last: bool = False
    num_classes: int = 0
    num_tasks: int = 0
    model: Any = dataclasses.field(default=None, compare=False)
    preprocess: Callable = dataclasses.field(default=None, compare=False)
    # The compiled optimizer and step per epoch length (``_compiled``): this learner's own, so
    # learners that differ only in ``model`` or ``preprocess`` never share one, and they die
    # with the learner when its run ends.
    _steps: dict = dataclasses.field(default_factory=dict, init=False, compare=False,
                                     repr=False)

    @classmethod
    def default_config(cls):
        """The dataclass fields with defaults, without the run's ``_RUN_FIELDS``."""
        config = super().default_config()
        for run_field in _RUN_FIELDS:
            del config[run_field]
        return config

    @classmethod
    def from_config(cls, config, **run) -> "ImageLearner":
        """Build from the config block plus the run's ``_RUN_FIELDS`` found in ``run``."""
        return cls(**{k: run[k] for k in _RUN_FIELDS if k in run}, **config.to_dict())

    @property
    def needs_key(self) -> bool:
        """Whether ``loss`` takes a per-batch ``key`` (default: no)."""
        return False

    def optimizer(self, steps_per_epoch: int) -> optax.GradientTransformation:
        """The per-task optimizer of ``params`` (default: ``optax.adam(learning_rate)``);
        ``steps_per_epoch`` (batches per epoch on the task) is there for per-epoch schedules."""
        del steps_per_epoch
        return optax.adam(self.learning_rate)

    def end_task(self, state, task_range: tuple[int, int]):
        """Called after the task's epochs (e.g. to record the classes seen); default: no change."""
        del task_range
        return state

    def train_epochs(self, task_range: tuple[int, int]) -> int:
        """Epochs of the loop on the task of classes ``task_range`` (default: ``epochs``)."""
        del task_range
        return self.epochs

    def embed(self, state, backbone: PyTree, images: jax.Array) -> jax.Array:
        """float32[N, F] features of images float32[N, S, S, 3] (test transform, not yet
        preprocessed) for ``fit_features``; only learners with ``embeds`` implement it."""
        raise NotImplementedError(f"learner {self.name!r} does not embed (embeds=False)")

    def fit_features(self, state, features, labels, task_range: tuple[int, int]):
        """Fit on ``embed``'s float32[N, F] features of the task's training images and their
        int labels[N] in ``task_range`` (after ``end_task``); default: no change."""
        del features, labels, task_range
        return state

    def learn_task(self, state, task) -> tuple[Any, dict]:
        """``fit_on_images`` on the task's training batches (resumable at every step), the
        trained backbone handed back when ``trains_backbone``, then with ``embeds``
        ``fit_features`` on ``embed``'s features of the task's images. Returns ``(state,
        {"learner_loss_per_epoch": [...]})``."""
        state, losses, backbone = fit_on_images(
            self, state, task.backbone,
            task.epoch_batches(self.batch_size, self.train_epochs(task.range),
                               keyed=self.needs_key, drop_last=self.drop_last), task.range,
            at_boundary=task.at_boundary, resume=task.resume,
            steps_per_epoch=task.steps_per_epoch(self.batch_size, self.drop_last))
        if self.trains_backbone:
            task.replace_backbone(backbone)
        if self.embeds:
            embed = self.jitted("embed", task.replicated)
            features = task.features(embed=lambda backbone, x: embed(state, backbone, x))
            state = self.fit_features(state, features, task.labels, task.range)
        return state, {"learner_loss_per_epoch": losses}

    def test_logits(self, state, view) -> np.ndarray:
        """``logits`` of the seen classes' test images, batch by batch (``view.batches()``)."""
        logits = self.jitted("logits", view.replicated)
        return np.concatenate([np.asarray(logits(state, view.backbone, x))
                               for x, _ in view.batches()])

    def programs(self, state, backbone, images, num_classes) -> list[Program]:
        """Its training step on a batch of ``batch_size`` (``epochs`` passes over the task),
        ``logits`` on a test batch and, for a learner that embeds, ``embed`` once per training
        image (``Learner.programs``). The training batch is not laid out on a mesh."""
        del num_classes
        tx, step = _build_step(self, 1)
        params = ({"params": state.params, "backbone": backbone} if self.trains_backbone
                  else state.params)
        side, b = images.shape[1], self.batch_size
        args = (params, jax.eval_shape(tx.init, params), state,
                None if self.trains_backbone else backbone,
                jax.ShapeDtypeStruct((b, side, side, 3), images.dtype),
                jax.ShapeDtypeStruct((b,), jnp.int32), jax.ShapeDtypeStruct((2,), jnp.int32),
                *([jax.eval_shape(lambda: jax.random.key(0))] if self.needs_key else []))
        test = (state, backbone, images)
        out = [Program(f"{self.name} training step", step, args, b, train_passes=self.epochs),
               Program(f"{self.name} logits", jax.jit(self.logits), test, images.shape[0],
                       test_passes=1)]
        if self.embeds:
            out.append(Program(f"{self.name} embed", jax.jit(self.embed), test, images.shape[0],
                               train_passes=1))
        return out

    def jitted(self, method: str, replicated) -> Callable:
        """``jax.jit`` of ``method`` (``"logits"`` or ``"embed"``) with replicated outputs,
        compiled once per learner object (kept in ``_steps`` with the training steps)."""
        if method not in self._steps:
            self._steps[method] = jax.jit(getattr(self, method), out_shardings=replicated)
        return self._steps[method]


def epoch_cosine(learning_rate: float, epochs: int, steps_per_epoch: int,
                 min_lr: float = 0.0) -> optax.Schedule:
    """PyTorch ``CosineAnnealingLR(T_max=epochs, eta_min=min_lr)`` stepped once per epoch:
    step n has ``min_lr + (learning_rate - min_lr) * (1 + cos(pi e / epochs)) / 2`` with
    ``e = n // steps_per_epoch`` (APER's and EASE's reference schedule)."""
    def schedule(step):
        epoch = (step // max(steps_per_epoch, 1)).astype(jnp.float32)
        cosine = 0.5 * (1.0 + jnp.cos(jnp.pi * epoch / max(epochs, 1)))
        return min_lr + (learning_rate - min_lr) * cosine
    return schedule


def fit_on_images(learner: ImageLearner, state, backbone: PyTree,
                  epoch_batches: Callable[[int, int], Iterable], task_range: tuple[int, int],
                  at_boundary: Callable[[dict, Callable[[], dict]], None] | None = None,
                  resume: dict | None = None, steps_per_epoch: int = 1
                  ) -> tuple[Any, list[float], PyTree]:
    """Train ``state.params`` on one task: ``learner.train_epochs(task_range)`` epochs of
    ``learner.optimizer(steps_per_epoch)`` steps on ``learner.loss`` (a fresh optimizer state
    per task; the backbone frozen, or trained with the params when ``trains_backbone``).

    Args:
      learner: the image learner.
      state: its state (``state.params`` is trained).
      backbone: the ViT params (not modified; trained on a copy when ``trains_backbone``).
      epoch_batches: ``(epoch, start) -> iterable of (images, labels)`` device batches of the
        epoch from batch ``start`` on.
      task_range: (start, end) of the task's classes.
      at_boundary: optional ``mist.Boundary`` called after each step with ``{"phase":
        "learner", "epoch": e, "batch": b}`` and a function returning the loop's state.
      resume: such a state (restored from an in-task checkpoint): continue from there bitwise.
      steps_per_epoch: batches per epoch (``learner.optimizer``'s argument).
    Returns:
      ``(learner.end_task(new state, task_range), mean loss per epoch, backbone)``: the
      backbone as given, or trained (``trains_backbone``).
    Raises:
      ValueError: a NaN/inf loss.
    """
    tx, step = _compiled(learner, steps_per_epoch)
    # A private copy: the step donates its params, and ``state`` (read by in-task checkpoints)
    # keeps its own.
    params = jax.tree.map(jnp.array, {"params": state.params, "backbone": backbone}
                          if learner.trains_backbone else state.params)
    carry = (params, tx.init(params))
    bounds = jnp.asarray(task_range, jnp.int32)
    frozen = None if learner.trains_backbone else backbone
    fixed = []  # (state, bounds), placed on the batches' mesh at the first step

    def train_step(carry, batch):
        images, labels, *key = batch  # a key with ``needs_key``
        if not fixed:  # first step: everything on the batches' mesh
            carry, placed = _on_mesh_of(images, (carry, (state, bounds)))
            fixed.extend(placed)
        params, opt_state, loss = step(*carry, fixed[0], frozen, images, labels, fixed[1],
                                       *key)
        return (params, opt_state), loss, None

    run = (loop.LoopState(epoch=0, carry=carry) if resume is None else
           loop.LoopState.restore(resume, carry, lambda c: jax.tree.map(jnp.asarray, c)))
    run = loop.run_epochs(train_step, run, epoch_batches, range(learner.train_epochs(task_range)),
                          phase="learner", at_boundary=at_boundary, empty_loss=0.0,
                          nan_hint=f"lower learner.{learner.name}.learning_rate.")
    params = run.carry[0]
    if learner.trains_backbone:
        params, backbone = params["params"], params["backbone"]
    return learner.end_task(state.replace(params=params), task_range), run.losses, backbone


def _on_mesh_of(batch: jax.Array, tree: PyTree) -> PyTree:
    """The leaves of ``tree`` not yet on a mesh, replicated on ``batch``'s mesh (when it has
    one): the step's outputs live there, so its inputs must too, or the first step of each
    task compiles a second time. Leaves already on a mesh (an FSDP backbone) keep theirs."""
    sharding = getattr(batch, "sharding", None)
    if not isinstance(sharding, jax.sharding.NamedSharding):
        return tree
    rep = jax.sharding.NamedSharding(sharding.mesh, jax.sharding.PartitionSpec())
    return jax.tree.map(lambda x: x if isinstance(getattr(x, "sharding", None),
                                                  jax.sharding.NamedSharding)
                        else jax.device_put(x, rep), tree)


def _compiled(learner: ImageLearner, steps_per_epoch: int
              ) -> tuple[optax.GradientTransformation, Callable]:
    """The learner's optimizer and jitted step, built once per learner object and epoch length
    (not per task), kept in the learner's own ``_steps``."""
    if steps_per_epoch not in learner._steps:  # pylint: disable=protected-access
        learner._steps[steps_per_epoch] = _build_step(learner, steps_per_epoch)
    return learner._steps[steps_per_epoch]  # pylint: disable=protected-access


def _build_step(learner: ImageLearner, steps_per_epoch: int
                ) -> tuple[optax.GradientTransformation, Callable]:
    tx = learner.optimizer(steps_per_epoch)

    def loss_fn(params, state, backbone, images, labels, bounds, key):
        if learner.trains_backbone:
            params, backbone = params["params"], params["backbone"]
        extra = {"key": key} if key is not None else {}
        return learner.loss(params, state, backbone, images, labels, bounds, **extra)

    def step(params, opt_state, state, backbone, images, labels, bounds, key=None):
        loss, grads = jax.value_and_grad(loss_fn)(params, state, backbone, images, labels,
                                                  bounds, key)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return tx, jax.jit(step, donate_argnums=(0, 1))
