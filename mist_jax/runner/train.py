"""The class-incremental run: per task, tune the backbone (MIST), fit the learner, evaluate.

Per task t (docs/algorithm.md §1), each step a function you can also call from a notebook:

  mist.score -> mist.select -> mist.tune -> mist.bookkeep    (``mist.Tuner.adapt``; when MIST
                                                              or the learner tunes the backbone)
  learner: fit_task on features | learners.fit_on_images    (``Learner.inputs``)
  evaluate -> checkpoint + outputs

``Run`` only wires them: it builds the data (``data.tasks.load_data``), the backbone
(``build_backbone``), the learner (``build_learner``: the registry, never a learner's name) and
MIST's ``Tuner``, and keeps the state between tasks. All randomness of task t derives from seed
sequences ``(config.seed, stream, t, ...)`` (mist_jax/infra/seeds.py), so a run resumed from the
checkpoint of task t-1 ends bit-identical to an uninterrupted one on CPU.

Scale-out (mist_jax/infra/sharding.py): everything runs on the ``config.mesh`` device mesh with
``jax.jit`` shardings; each process transforms only its rows of every global batch (train
augmentation draws from one generator per image, so the stream does not depend on the process
or device count); batches are prefetched two deep onto the devices; only process 0 writes
results and logs, while every process takes part in the (collective) orbax checkpoints.
"""

from __future__ import annotations

import json
import time
import weakref
from pathlib import Path
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tqdm
from absl import logging

from mist_jax.infra import checkpoint, interrupt, seeds, sharding
from mist_jax.mist import ablations, fish, masks
from mist_jax import learners, mist
from mist_jax.runner import metrics, outputs, validate
from mist_jax.infra.checkpoint import RunCheckpointer
from mist_jax.data import batches, get_preprocess, prefetch, sources, tasks, transforms
from mist_jax.infra.lock import WorkdirLock
from mist_jax.models import load_pretrained, tiny_vit


def build_backbone(cfg: ml_collections.ConfigDict):
    """-> (ViT module, float32 params, preprocess fn) for ``config.model``.

    ``model.source = "tiny"`` is a 2-block random ViT for smoke tests (no pre-training).
    """
    m = cfg.model
    kw = dict(dtype=jnp.dtype(m.dtype), remat=m.remat)
    if m.source == "tiny":
        model = tiny_vit(image_size=cfg.data.image_size, **kw)
        x = jnp.zeros((1, cfg.data.image_size, cfg.data.image_size, 3))
        params = jax.jit(model.init)(seeds.key(cfg.seed, "backbone"), x)["params"]  # 1 compile
    else:
        model, params = load_pretrained(m.source, image_size=cfg.data.image_size, **kw)
    size, patch = cfg.data.image_size, model.patch_size
    if size % patch:
        raise ValueError(f"data.image_size={size} is not a multiple of the model's patch size "
                         f"{patch} (the last {size % patch} px would be dropped); use e.g. "
                         f"{max(patch, size - size % patch)} or {size - size % patch + patch}.")
    return model, params, get_preprocess(m.preprocess)


def build_learner(cfg: ml_collections.ConfigDict, **run: Any) -> learners.Learner:
    """The registered learner ``config.learner.name`` from its block ``config.learner.<name>``.

    ``run``: what the run knows (``num_classes``, ``num_tasks``, ``model``, ``preprocess``).
    The name and the block's presence are checked by ``validate.check_config``.
    Raises: ValueError for an unknown learner or a bad key.
    """
    return learners.get_learner(cfg.learner.name, cfg.learner[cfg.learner.name], **run)


def tuning_config(cfg: ml_collections.ConfigDict, learner: learners.Learner):
    """The backbone-tuning settings of the run: the learner's own when it ``tunes_backbone``,
    else ``config.mist`` when MIST is enabled, else None (the backbone stays frozen)."""
    if learner.tunes_backbone:
        return learner.tuning(cfg.mist)
    return cfg.mist if cfg.mist.enabled else None


def build_tuner(mist_cfg: ml_collections.ConfigDict, model, preprocess, params,
                mesh: sharding.MeshContext, out_dim: int):
    """The backbone tuner of ``config.mist``: a ``mist.Tuner`` (with a ``fish.FishScorer``
    for ``selector="fish"``), or for ``spr = rand | l2 | grad`` the authors' ablation
    procedure (``ablations.SprTuner``). ``out_dim``: the head's width (classes for CE losses)."""
    if ablations.requested(mist_cfg):
        return ablations.SprTuner(ablations.make_loss_fn(model, preprocess, out_dim), mist_cfg, params,
                            mesh)
    loss_fn = mist.make_loss_fn(model, preprocess, mist_cfg.objective, mist_cfg.temperature,
                                out_dim)
    scorer = (fish.FishScorer(model, preprocess, mist_cfg.temperature, mesh.replicated)
              if mist_cfg.selector == "fish" else None)
    return mist.Tuner(loss_fn, mist_cfg, params, mesh, fish=scorer)


class Run:
    """One class-incremental experiment in one workdir (resumable).

    Args:
      cfg: the locked run config (``configs/*.py``).
      workdir: output folder; an existing run there with the same config is resumed.
      progress: show a tqdm bar per epoch.
      stop: the ``interrupt.StopSignal`` to honour at step boundaries (None: only preemption
        notices and ``checkpoint_every_steps`` write in-task checkpoints).
    Raises:
      ValueError / FileNotFoundError: a bad config value, learner or dataset (before any work).
      interrupt.Interrupted (from ``run``): stopped on request after a checkpoint.
    """

    def __init__(self, cfg: ml_collections.ConfigDict, workdir: str | Path, progress: bool = True,
                 stop: interrupt.StopSignal | None = None):
        validate.check_config(cfg)  # before any data, weights or work
        sharding.initialize_distributed()
        self.cfg, self.workdir, self.stop = cfg, Path(workdir), stop
        self.writer = sharding.is_writer()
        self._lock = WorkdirLock(self.workdir) if self.writer else None
        self.progress, self._bar = progress and self.writer, None
        self._prefetchers = weakref.WeakSet()  # closed when run() ends, however it ends
        self.mesh = sharding.from_config(cfg)
        self.transforms = transforms.get_transforms(cfg.data)
        self.model, backbone, self.preprocess = build_backbone(cfg)
        self.data = tasks.load_data(cfg)
        self.learner = build_learner(cfg, num_classes=self.data.num_classes,
                                     num_tasks=len(self.data.ranges), model=self.model,
                                     preprocess=self.preprocess)
        self.tuning = tuning_config(cfg, self.learner)
        mist_cfg = self.tuning or cfg.mist
        out_dim = (self.data.num_classes if mist_cfg.objective == "ce" or ablations.requested(mist_cfg)
                   else mist_cfg.proj_dim)
        head = mist.init_head(seeds.key(cfg.seed, "head"), self.model.width, out_dim)
        self.params = self.mesh.place({"backbone": backbone, "head": head})
        self.mist_state = masks.MistState(*self.mesh.place(tuple(
            masks.init_mist_state(self.params))))
        self.learner_state = self.learner.init(seeds.key(cfg.seed, "learner"), self.model.width)
        self.tuner = None
        if self.tuning is not None:
            self.tuner = build_tuner(mist_cfg, self.model, self.preprocess, self.params,
                                     self.mesh, out_dim)
        # MIST's per-task result, shared with runs that differ only in their learner.
        self.mist_cache = None
        # Not for learners that move the backbone themselves: MIST's input would differ.
        if (cfg.mist.get("cache_dir") and self.tuner is not None
                and not (self.learner.tunes_backbone or self.learner.trains_backbone)):
            self.mist_cache = checkpoint.TunedBackboneCache(cfg.mist.cache_dir, cfg.to_dict())
        backbone_sh = self.mesh.shardings(self.params)["backbone"]
        rep = self.mesh.replicated
        self._features = jax.jit(
            lambda p, x: self.model.apply({"params": p}, self.preprocess(x)),
            in_shardings=(backbone_sh, None), out_shardings=rep)
        self._image_logits = jax.jit(self.learner.logits, out_shardings=rep) \
            if self.learner.inputs == "images" else None
        if self.learner.inputs == "images" and self.learner.embeds:
            embed = jax.jit(self.learner.embed, out_shardings=rep)
            self._embed = lambda backbone, x: embed(self.learner_state, backbone, x)
        # Test features per test image, valid while the backbone is unchanged (version).
        self._backbone_version, self._test_cache = 0, None
        self.record = {"next_task": 0, "acc_matrix": [], "top1_curve": [], "top5_curve": [],
                       "tasks": [], "class_order": self.data.order.tolist()}
        self.ckpt = RunCheckpointer(self.workdir / "checkpoints", cfg.to_dict())
        self._in_task, self._boundaries = None, 0
        self._resume()
        # The event log keeps exactly the lines of the work in the checkpoint.
        lines, purge = self.record.get("event_lines", 0), self.record["next_task"] * STEPS_PER_TASK
        if self._in_task is not None:
            lines = self._in_task["record"]["event_lines"]
            purge += self._in_task["record"]["mist_steps"] + 1
        self.events = (outputs.EventLog(self.workdir, lines, purge_step=purge)
                       if self.writer else _NoLog())
        if self.writer:
            outputs.write_json(self.workdir / "config.json", cfg.to_dict())

    # ----------------------------------------------------------------- persistence
    def _state_tree(self) -> dict:
        return jax.tree_util.tree_map(checkpoint.to_host, {
            "params": self.params,
            "mist": {"count": self.mist_state.count, "frozen": self.mist_state.frozen},
            "learner": flax.serialization.to_state_dict(self.learner_state)})

    def _resume(self) -> None:
        restored = self.ckpt.restore()
        if restored is not None:
            self._restore_task(*restored)
        self._restore_in_task()

    def _restore_task(self, state: dict, record: dict) -> None:
        if record["class_order"] != self.record["class_order"]:
            raise ValueError("The checkpoint's class order differs from this dataset's; use a "
                             "new --workdir.")
        self.params = self.mesh.place(state["params"])
        self.mist_state = masks.MistState(*self.mesh.place(
            (state["mist"]["count"], state["mist"]["frozen"])))
        self.learner_state = flax.serialization.from_state_dict(self.learner_state,
                                                                state["learner"])
        self.record = record
        logging.info("Resumed %s at task %d.", self.workdir, record["next_task"])

    def _restore_in_task(self) -> None:
        restored = self.ckpt.restore_in_task(self.record["next_task"])
        if restored is None:
            return
        state, record = restored
        self._in_task = {"state": state, "record": record}
        self._boundaries = record["n"]
        pos = record["position"]
        logging.info("Resumed task %d inside its %s phase (epoch %d, batch %d).",
                     self.record["next_task"], pos["phase"], pos["epoch"], pos["batch"])

    # ----------------------------------------------------------------- in-task checkpoints
    def _boundary(self, t: int, position: dict, get_state, run_state) -> None:
        """A step boundary of task t (``mist.Boundary``): write an in-task checkpoint every
        ``checkpoint_every_steps`` boundaries and on a stop request or preemption notice; on
        the latter two, raise ``interrupt.Interrupted`` after it."""
        self._boundaries += 1
        n, every = self._boundaries, self.cfg.checkpoint_every_steps
        stop = self._stop_requested() or self.ckpt.reached_preemption(t, n)
        if stop or (every and n % every == 0):
            task_log, mist_steps, arrays = run_state()
            self.ckpt.save_in_task(t, n, {"loop": get_state(), "run": arrays}, {
                "position": position, "task_log": task_log, "mist_steps": mist_steps,
                "event_lines": self.events.lines})
        if stop:
            where = (f"{position['phase']} phase, epoch {position['epoch']}, batch "
                     f"{position['batch']}")
            raise interrupt.Interrupted(
                f"Stopped in {self.workdir} during task {t} ({where}) after an in-task "
                "checkpoint. Re-run the same command to resume from there.")

    def _stop_requested(self) -> bool:
        # One process: the local signal. Several: only the preemption sync point, which every
        # host reaches at the same step (a local signal could differ by a step between hosts).
        return bool(self.stop is not None and self.stop.requested and jax.process_count() == 1)

    # ----------------------------------------------------------------- data
    def _batches(self, images: sources.ImageSet, idx: np.ndarray, labels: np.ndarray, batch: int,
                 streams: tuple[str, int, int] | None = None, key: jax.Array | None = None,
                 desc: str | None = None, start: int = 0):
        """Global batches on the mesh, prefetched 2 deep: (float32[B, S, S, 3] images in [0, 1],
        int32[B] labels[, PRNG key]) (``data.batches.host_batches``).

        ``streams = (prefix, t, e)``: shuffled, train transform, seed sequences
        ``(config.seed, prefix + "order" | prefix + "transform", t, e)``; None: in order, test
        transform. ``key``: batch b also gets ``fold_in(key, b)``. ``start``: skip the first
        batches (resuming inside an epoch).
        """
        train_tf, test_tf = self.transforms
        seqs = {}
        if streams is not None:
            prefix, t, e = streams
            seqs = dict(order_seq=seeds.sequence(self.cfg.seed, prefix + "order", t, e),
                        transform_seq=seeds.sequence(self.cfg.seed, prefix + "transform", t, e))
        host = batches.host_batches(images, idx, labels, batch,
                                    train_tf if streams is not None else test_tf,
                                    local_rows=self.mesh.local_rows, start=start, **seqs)
        if key is not None:
            host = batches.with_keys(host, key, start)
        if desc is not None:
            host = self._bar = tqdm.tqdm(host, desc=desc, leave=False, disable=not self.progress,
                                         initial=start, total=-(-len(idx) // batch))
        gen = prefetch.prefetch(host, lambda b: self.mesh.put_batch(b[1], b[0]), size=2)
        self._prefetchers.add(gen)
        return gen

    def features(self, split: str, idx: np.ndarray, labels: np.ndarray,
                 embed=None) -> np.ndarray:
        """float32[N, D] backbone features with the test transform (docs/algorithm.md §9), or
        with ``embed(backbone, images)`` (an image learner's ``embed``) float32[N, F]."""
        images = self.data.train if split == "train" else self.data.test
        embed = embed or self._features
        feats = [np.asarray(embed(self.params["backbone"], x)) for x, _ in
                 self._batches(images, idx, labels, self.cfg.learner.eval_batch_size)]
        return np.concatenate(feats) if feats else np.zeros((0, self.model.width), np.float32)

    def _test_features(self, pos: np.ndarray) -> np.ndarray:
        """Features of the test images at positions ``pos`` of ``data.test_idx``, each computed
        once per backbone version (an unchanged backbone: MIST off, or mist.tasks='first'
        after task 0, reuses the features of earlier tasks' classes)."""
        data, cache = self.data, self._test_cache
        if cache is None or cache["version"] != self._backbone_version:
            n = len(data.test_idx)
            cache = self._test_cache = {"version": self._backbone_version,
                                        "feats": np.zeros((n, self.model.width), np.float32),
                                        "have": np.zeros(n, bool)}
        need = pos[~cache["have"][pos]]
        if need.size:
            cache["feats"][need] = self.features("test", data.test_idx[need], data.test_labels[need])
            cache["have"][need] = True
        return cache["feats"][pos]

    # ----------------------------------------------------------------- the loop
    def run(self) -> dict:
        """Run (or finish) every task; returns the results dict also written to results.json."""
        try:
            for t in range(self.record["next_task"], len(self.data.ranges)):
                self._task(t)
                if self._stop_requested() and t + 1 < len(self.data.ranges):
                    raise interrupt.Interrupted(
                        f"Stopped in {self.workdir} after task {t} (checkpointed). Re-run the "
                        f"same command to resume with task {t + 1}.")
        finally:
            # A stop or an error leaves the epoch's batch generators suspended, their producer
            # threads mid-batch: stop and join them before the process may exit.
            for gen in list(self._prefetchers):
                gen.close()
            self.events.close()
            self.ckpt.close()
            if self.mist_cache is not None:
                self.mist_cache.close()
            if self._lock is not None:
                self._lock.release()
        if self.writer:
            return outputs.finish(self.workdir, self.cfg, self.record)
        rec = self.record
        return dict(metrics.summarize(rec["acc_matrix"], rec["top1_curve"], rec["top5_curve"]),
                    tasks=rec["tasks"], class_order=rec["class_order"])

    def _task(self, t: int) -> None:
        lo, hi = self.data.ranges[t]
        idx, labels = self.data.task(t)
        task_log: dict[str, Any] = {"task": t, "classes": [lo, hi], "train_images": len(idx)}
        part, self._in_task = self._in_task, None  # set when resuming inside task t
        phase = part["record"]["position"]["phase"] if part else None
        before, elapsed = None, 0.0
        if part:
            task_log, elapsed = part["record"]["task_log"], part["record"]["task_log"]["elapsed"]
            before = part["state"].get("run", {}).get("before")
        t0 = time.perf_counter() - elapsed
        phases = {"tune_seconds": 0.0}  # this process's time in each phase (not a resumed part)
        if phase == "learner":  # MIST had finished: take its result
            self._restore_tuned(part["state"]["run"])  # always saved in this phase
        elif self.tuner is not None and (self.learner.tunes_backbone
                                         or self.cfg.mist.tasks == "all" or t == 0):
            if self.learner.tracks_drift and t > 0 and before is None:
                before = self.features("train", idx, labels)
            run_state = lambda: (dict(task_log, elapsed=time.perf_counter() - t0), 0,
                                 {} if before is None else {"before": before})
            clock = time.perf_counter()
            task_log.update(self.tune_backbone(t, idx, labels, run_state,
                                               part["state"]["loop"] if part else None))
            phases["tune_seconds"] = time.perf_counter() - clock
        run_state = lambda: (dict(task_log, elapsed=time.perf_counter() - t0),
                             task_log.get("steps", 0), self._tuned_state())
        clock = time.perf_counter()
        task_log.update(self.fit_learner(t, idx, labels, before, run_state,
                                         part["state"]["loop"] if phase == "learner" else None))
        phases["learner_seconds"] = time.perf_counter() - clock
        clock = time.perf_counter()
        row, top1, top5 = self.evaluate(hi)
        phases["eval_seconds"] = time.perf_counter() - clock
        rec = self.record
        rec["acc_matrix"].append(row)
        rec["top1_curve"].append(top1)
        rec["top5_curve"].append(top5)
        task_log.pop("elapsed", None)
        task_log.update(seconds=time.perf_counter() - t0, **phases, top1=top1, acc_row=row)
        rec["tasks"].append(task_log)
        rec["next_task"] = t + 1
        event = {k: v for k, v in task_log.items() if k not in _PER_TENSOR}
        self.events.write({"event": "task_end", **event}, step=(t + 1) * STEPS_PER_TASK - 1)
        logging.info("task %d classes [%d, %d): top1 %.2f  row %s", t, lo, hi, top1,
                     " ".join(f"{a:.1f}" for a in row))
        rec["event_lines"] = self.events.lines
        self.ckpt.save(t, self._state_tree(), rec)
        self.ckpt.clear_in_task()
        self._boundaries = 0

    def _tuned_state(self, with_learner: bool = True) -> dict:
        """The arrays MIST changed in this task (for an in-task checkpoint after tuning, or,
        without the learner's, for the tuned-backbone cache)."""
        state = {"params": self.params, "mist": {"count": self.mist_state.count,
                                                 "frozen": self.mist_state.frozen}}
        if with_learner:
            state["learner"] = flax.serialization.to_state_dict(self.learner_state)
        return state

    def _restore_tuned(self, saved: dict) -> None:
        self.params = self.mesh.place(saved["params"])
        self.mist_state = masks.MistState(*self.mesh.place(
            (saved["mist"]["count"], saved["mist"]["frozen"])))
        self.learner_state = flax.serialization.from_state_dict(self.learner_state,
                                                                saved["learner"])
        self._backbone_version += 1

    def tune_backbone(self, t: int, idx: np.ndarray, labels: np.ndarray, run_state=None,
                      resume: dict | None = None) -> dict:
        """MIST (or the learner's own tuning) on task t's images; returns its log.

        ``run_state() -> (task log, MIST steps, arrays)``: the runner's part of an in-task
        checkpoint; ``resume``: the loop state of one (``mist.Tuner.adapt``).
        """
        fresh = self.mist_cache is not None and resume is None  # a whole tuning pass
        cached = self.mist_cache.load(t) if fresh else None
        if cached is not None:
            return self._reuse_tuned(t, *cached)
        cfg, rows = self.cfg, []
        epochs = self.tuning.epochs
        epoch_batches = lambda e, start: self._batches(
            self.data.train, idx, labels, self.tuning.batch_size, streams=("", t, e),
            key=seeds.key(cfg.seed, "views", t, e), start=start,
            desc=f"task {t} MI epoch {e + 1}/{epochs}" + (" (scoring)" if e == 0 else ""))
        at = None if run_state is None else (
            lambda pos, get: self._boundary(t, pos, get, run_state))
        extra = ({"task_range": self.data.ranges[t]} if isinstance(self.tuner, ablations.SprTuner)
                 else {})
        self.params, self.mist_state, log = self.tuner.adapt(
            self.params, self.mist_state, epoch_batches, seeds.key(cfg.seed, "drop", t),
            on_step=lambda row: (rows.append(_jsonable(row)), self._on_step(t, row)),
            at_boundary=at, resume=resume, **extra)
        self._backbone_version += 1
        self.learner_state = self.learner.after_tuning(self.learner_state, self.params)
        if fresh:
            self.mist_cache.save(t, self._tuned_state(with_learner=False), {
                "log": _jsonable(log), "rows": rows, "seconds": log["seconds"]})
        return log

    def _reuse_tuned(self, t: int, state: dict, record: dict) -> dict:
        """Take task t's MIST result from the cache (``checkpoint.TunedBackboneCache``):
        params and bookkeeping, the learner's ``after_tuning``, the step events replayed; the
        log gains ``mist_reused_seconds`` (the tuning time the run did not spend)."""
        self._restore_tuned(dict(state, learner=flax.serialization.to_state_dict(
            self.learner_state)))
        self.learner_state = self.learner.after_tuning(self.learner_state, self.params)
        for row in record["rows"]:
            self._on_step(t, row)
        return dict(record["log"], mist_reused_seconds=record["seconds"])

    def fit_learner(self, t: int, idx: np.ndarray, labels: np.ndarray, before=None,
                    run_state=None, resume: dict | None = None) -> dict:
        """The learner's step on task t: ``fit_task`` on features (after ``compensate`` with
        the features ``before`` tuning, if given), or ``fit_on_images``; returns its log.
        ``run_state`` / ``resume``: as ``tune_backbone`` (image learners)."""
        learner, task_range = self.learner, self.data.ranges[t]
        if learner.inputs == "images":
            epochs = learner.train_epochs(task_range)
            epoch_batches = lambda e, start: self._batches(
                self.data.train, idx, labels, learner.batch_size, streams=("learner_", t, e),
                start=start, desc=f"task {t} {learner.name} epoch {e + 1}/{epochs}")
            at = None if run_state is None else (
                lambda pos, get: self._boundary(t, pos, get, run_state))
            self.learner_state, losses, backbone = learners.fit_on_images(
                learner, self.learner_state, self.params["backbone"], epoch_batches, task_range,
                at_boundary=at, resume=resume, steps_per_epoch=-(-len(idx) // learner.batch_size))
            if learner.trains_backbone:
                self.params = self.mesh.place(dict(self.params, backbone=backbone))
                self._backbone_version += 1
            if learner.embeds:
                feats = self.features("train", idx, labels, embed=self._embed)
                self.learner_state = learner.fit_features(self.learner_state, feats, labels,
                                                          task_range)
            return {"learner_loss_per_epoch": losses}
        feats = self.features("train", idx, labels)
        if before is not None:
            self.learner_state = learner.compensate(self.learner_state, before, feats)
        self.learner_state = learner.fit_task(self.learner_state, feats, labels, task_range)
        return {}

    def _on_step(self, t: int, row: dict) -> None:
        self.events.write(dict(row, event="mist_step", task=t),
                          step=t * STEPS_PER_TASK + row["step"])
        if self._bar is not None:
            self._bar.set_postfix(loss=f"{row['mi_loss']:.3f}")

    def evaluate(self, num_seen: int) -> tuple[list[float], float, float]:
        """(per-task accuracy row, top-1, top-5) in % on the test images of the first
        ``num_seen`` classes (docs/benchmarks.md)."""
        data = self.data
        pos = data.seen(num_seen)
        labels = data.test_labels[pos]
        if self._image_logits is not None:
            logits = np.concatenate([np.asarray(self._image_logits(
                self.learner_state, self.params["backbone"], x)) for x, _ in self._batches(
                    data.test, data.test_idx[pos], labels, self.cfg.learner.eval_batch_size)])
        else:
            logits = np.asarray(self.learner.logits(self.learner_state,
                                                    self._test_features(pos)))
        logits = logits[:, :num_seen]
        seen = [r for r in data.ranges if r[1] <= num_seen]
        return (metrics.accuracy_row(logits, labels, seen),
                metrics.topk_accuracy(logits, labels, 1), metrics.topk_accuracy(logits, labels, 5))


#: TensorBoard steps of task t's events: t * STEPS_PER_TASK + the MIST step; its task_end
#: event at (t + 1) * STEPS_PER_TASK - 1.
STEPS_PER_TASK = 100000
#: Per-tensor task-log entries kept in results.json but not in the event log.
_PER_TENSOR = ("coverage", "block_selected", "score_share", "overlap_histogram")


class _NoLog:
    """The event log of processes other than 0: writes nothing."""

    lines = 0

    def write(self, row: dict, step: int) -> None:
        del row, step

    def close(self) -> None:
        pass


def _jsonable(obj: Any) -> Any:
    """``obj`` as it reads back from JSON (numpy scalars as floats, tuples as lists)."""
    return json.loads(json.dumps(obj, default=float))
