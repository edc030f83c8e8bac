"""The class-incremental run: per task, MIST tunes the backbone, the learner learns the task,
the run evaluates and checkpoints (docs/algorithm.md §1). ``Run._task`` is that body:

  tune_backbone      mist.Tuner.adapt: score -> select -> tune -> bookkeep (when it tunes)
  learn_task         the learner's one method (``learners.Learner.learn_task``)
  evaluate           accuracy on the seen classes' test images (``runner.evaluate``)
  checkpoint         the ``RunState`` (``runner.state``) and the outputs

All randomness of task t derives from seed sequences ``(config.seed, stream, t, ...)``
(mist_jax/infra/seeds.py), and every loop stops only at step boundaries where the state is
checkpointable (``infra.loop``), so a run resumed from any checkpoint ends bit-identical to an
uninterrupted one on CPU. Everything runs on the ``config.mesh`` device mesh (infra/sharding.py);
process 0 writes results and logs, every process takes part in the orbax checkpoints.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import jax
import ml_collections
from absl import logging

from mist_jax import mist
from mist_jax.data import manifest, tasks
from mist_jax.infra import checkpoint, interrupt, seeds, sharding, tuning_cache
from mist_jax.infra.lock import WorkdirLock
from mist_jax.mist import ablations, masks
from mist_jax.runner import metrics, outputs, timing, validate
from mist_jax.runner.build import (backbone_provenance, build_backbone, build_learner,
                                   build_tuner)
from mist_jax.runner.evaluate import Evaluator
from mist_jax.runner.inputs import Inputs
from mist_jax.runner.state import InTask, RunState
from mist_jax.runner.task import TaskView

#: TensorBoard steps of task t's events: t * STEPS_PER_TASK + the MIST step; its task_end
#: event at (t + 1) * STEPS_PER_TASK - 1.
STEPS_PER_TASK = 100000
#: Per-tensor task-log entries kept in results.json but not in the event log.
_PER_TENSOR = ("coverage", "block_selected", "score_share", "overlap_histogram")


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
        cfg = validate.run_config(cfg)  # only its learner's block
        sharding.initialize_distributed()
        self.cfg, self.workdir, self.stop = cfg, Path(workdir), stop
        self.writer = sharding.is_writer()
        self._lock = WorkdirLock(self.workdir) if self.writer else None
        if self.writer:  # refuse another config's workdir before anything is written
            self._lock.guard(lambda: outputs.check_workdir(self.workdir, cfg.to_dict()))
        self.mesh = sharding.from_config(cfg)
        self.inputs = Inputs(cfg, self.mesh, progress and self.writer)
        self.clock = timing.Clock(self.inputs)
        self.model, backbone, self.preprocess = build_backbone(cfg)
        self.data = tasks.load_data(cfg)
        split = manifest.of_data(self.data)  # which images, per task and split
        if self.writer:
            outputs.write_json(self.workdir / manifest.FILENAME, split)
        self.learner = build_learner(cfg, num_classes=self.data.num_classes,
                                     num_tasks=len(self.data.ranges), model=self.model,
                                     preprocess=self.preprocess)
        self.tuning = self.learner.tuning(cfg.mist)  # None: the backbone stays pre-trained
        mist_cfg = self.tuning or cfg.mist
        out_dim = (self.data.num_classes if mist_cfg.objective == "ce"
                   or ablations.requested(mist_cfg) else mist_cfg.proj_dim)
        head = mist.init_head(seeds.key(cfg.seed, "head"), self.model.width, out_dim)
        params = self.mesh.place({"backbone": backbone, "head": head})
        self.state = RunState(
            params, masks.MistState(*self.mesh.place(tuple(masks.init_mist_state(params)))),
            self.learner.init(seeds.key(cfg.seed, "learner"), self.model.width),
            {"next_task": 0, "acc_matrix": [], "top1_curve": [], "top5_curve": [],
             "tasks": [], "class_order": self.data.order.tolist(),
             "backbone": backbone_provenance(cfg, backbone)})
        self.tuner = (None if self.tuning is None else
                      build_tuner(mist_cfg, self.model, self.preprocess, params, self.mesh,
                                  out_dim))
        # MIST's per-task result, shared with runs that start the task from the same state; keyed
        # by the split and the files' stamps too: a changed file never reuses a stale tuning.
        self.mist_cache = (tuning_cache.TunedBackboneCache(cfg.mist.cache_dir, dict(
            cfg.to_dict(), split_digest=split["digest"], files=self.data.stamp))
            if cfg.mist.cache_dir and self.tuner is not None else None)
        self.evaluator = Evaluator(self.data, self.model, self.preprocess, self.inputs, params,
                                   cfg.learner.eval_batch_size)
        self.ckpt = checkpoint.RunCheckpointer(self.workdir / "checkpoints", cfg.to_dict())
        self._in_task, self._boundaries = None, 0
        self._resume()
        # The event log keeps exactly the lines of the work in the checkpoint.
        record = self.state.record
        lines, purge = record.get("event_lines", 0), record["next_task"] * STEPS_PER_TASK
        if self._in_task is not None:
            lines = self._in_task.record["event_lines"]
            purge += self._in_task.record["mist_steps"] + 1
        self.events = (outputs.EventLog(self.workdir, lines, purge_step=purge)
                       if self.writer else outputs.NoLog())
        self.finished = (outputs.finished_results(self.workdir) if self.writer and  # kept as is
                         self.record["next_task"] == len(self.data.ranges) else None)
        if self.writer and self.finished is None:
            outputs.write_json(self.workdir / "config.json", cfg.to_dict())

    # The run state's parts, as a notebook or a test reads them.
    params = property(lambda self: self.state.params)
    mist_state = property(lambda self: self.state.mist)
    learner_state = property(lambda self: self.state.learner)
    record = property(lambda self: self.state.record)

    # ----------------------------------------------------------------- the loop over tasks
    def run(self) -> dict:
        """Run (or finish) every task; returns the results dict also written to results.json."""
        logging.info("%s: task %d of %d next; its first steps compile (a minute on a small CPU; "
                     "cached for later runs).", self.workdir, self.record["next_task"],
                     len(self.data.ranges))
        try:
            for t in range(self.record["next_task"], len(self.data.ranges)):
                self._task(t)
                if self._stop_requested() and t + 1 < len(self.data.ranges):
                    raise interrupt.Interrupted(
                        f"Stopped in {self.workdir} after task {t} (checkpointed). Re-run the "
                        f"same command to resume with task {t + 1}.")
        finally:
            self.inputs.close()  # a stop leaves the epoch's prefetch threads mid-batch
            self.events.close()
            self.ckpt.close()
            if self.mist_cache is not None:
                self.mist_cache.close()
            if self._lock is not None:
                self._lock.release()
        if self.finished is not None:
            logging.info("%s was finished: its results.json is kept as written.", self.workdir)
            return self.finished
        if self.writer:
            return outputs.finish(self.workdir, self.cfg, self.record, timing=timing.summary(
                self.record["tasks"], self.clock.end_checkpoints))
        rec = self.record
        return dict(metrics.summarize(rec["acc_matrix"], rec["top1_curve"], rec["top5_curve"]),
                    tasks=rec["tasks"], class_order=rec["class_order"])

    def _task(self, t: int) -> None:
        """Task t, or what is left of it after an in-task checkpoint."""
        part, self._in_task = self._in_task, None
        idx, labels = self.data.task(t)
        task = TaskView(t, self.data.ranges[t], idx, labels, run=self)
        log = {"task": t, "classes": list(task.range), "train_images": len(idx)}
        elapsed = 0.0
        if part is not None:
            log, elapsed = part.record["task_log"], part.record["task_log"]["elapsed"]
            task.before = part.arrays.get("before")
        t0, phases, mark = time.perf_counter() - elapsed, {}, self.clock.mark()
        with timing.timed(phases, "tune_seconds"):
            if part is not None and part.phase == "learner":  # MIST had finished: its result
                self.state.load(part.arrays, self.mesh)
            elif self.tuning is not None and (self.tuning.tasks == "all" or t == 0):
                if task.before is None:
                    task.before = self.learner.before_tuning(self.state.learner, task)
                saved = lambda: {} if task.before is None else {"before": task.before}
                task_hook = self._hook(t, t0, log, saved, mist_steps=lambda: 0)
                log.update(self.tune_backbone(task, task_hook,
                                              part.loop if part is not None else None))
        task.at_boundary = self._hook(t, t0, log, lambda: self._tuned_arrays(task.before),
                                      mist_steps=lambda: log.get("steps", 0))
        task.resume = part.loop if part is not None and part.phase == "learner" else None
        with timing.timed(phases, "learner_seconds"):
            self.state.learner, learned = self.learner.learn_task(self.state.learner, task)
            log.update(learned)
        with timing.timed(phases, "eval_seconds"):
            row, top1, top5 = self.evaluator.evaluate(self.learner, self.state, task.range[1])
        log.pop("elapsed", None)
        log.update(seconds=time.perf_counter() - t0, **phases, **self.clock.since(mark),
                   top1=top1, acc_row=row)
        self._end_task(t, log, row, top1, top5)

    def _end_task(self, t: int, log: dict, row: list[float], top1: float, top5: float) -> None:
        """Record task t's results, log them and checkpoint the run state."""
        rec = self.record
        for key, value in (("acc_matrix", row), ("top1_curve", top1), ("top5_curve", top5),
                           ("tasks", log)):
            rec[key].append(value)
        rec["next_task"] = t + 1
        event = {k: v for k, v in log.items() if k not in _PER_TENSOR}
        self.events.write({"event": "task_end", **event}, step=(t + 1) * STEPS_PER_TASK - 1)
        lo, hi = self.data.ranges[t]
        logging.info("task %d classes [%d, %d): top1 %.2f  row %s", t, lo, hi, top1,
                     " ".join(f"{a:.1f}" for a in row))
        rec["event_lines"] = self.events.lines
        with self.clock.checkpointing(end_of_task=True):
            self.ckpt.save(t, self.state.arrays(), rec)
        self.ckpt.clear_in_task()
        self._boundaries = 0

    # ----------------------------------------------------------------- MIST
    def tune_backbone(self, task: TaskView, at_boundary=None, resume: dict | None = None
                      ) -> dict:
        """MIST (or the learner's own tuning) on the task's images; returns its log.
        ``at_boundary`` / ``resume``: the in-task checkpoint hooks (``mist.Tuner.adapt``)."""
        t, cfg, state = task.index, self.cfg, self.state
        digest = None
        if self.mist_cache is not None and resume is None:  # a whole tuning pass
            digest = state.digest(self.tuning)
            cached = self.mist_cache.load(t, digest) if digest else None
            if cached is not None:
                return self._reuse_tuned(t, *cached)
        epochs, rows = self.tuning.epochs, []
        epoch_batches = self.inputs.epochs(
            self.data.train, task.idx, task.labels, self.tuning.batch_size, "", t, epochs,
            keys=lambda e: seeds.key(cfg.seed, "views", t, e),
            desc=lambda e: f"task {t} MI epoch {e + 1}/{epochs}" + (" (scoring)" if e == 0
                                                                   else ""))
        state.params, state.mist, log = self.tuner.adapt(
            state.params, state.mist, epoch_batches, seeds.key(cfg.seed, "drop", t),
            on_step=lambda row: (rows.append(outputs.jsonable(row)), self._on_step(t, row)),
            at_boundary=at_boundary, resume=resume, task_range=task.range)
        state.backbone_version += 1
        if digest:
            self.mist_cache.save(t, digest, state.arrays(learner=False), {
                "log": outputs.jsonable(log), "rows": rows, "seconds": log["seconds"]})
        return log

    def _reuse_tuned(self, t: int, saved: dict, record: dict) -> dict:
        """Take task t's MIST result from the cache (``tuning_cache.TunedBackboneCache``): params
        and bookkeeping, the step events replayed; the log gains ``mist_reused_seconds`` (the
        tuning time the run did not spend)."""
        self.state.load(saved, self.mesh)
        for row in record["rows"]:
            self._on_step(t, row)
        return dict(record["log"], mist_reused_seconds=record["seconds"])

    def _on_step(self, t: int, row: dict) -> None:
        self.events.write(dict(row, event="mist_step", task=t),
                          step=t * STEPS_PER_TASK + row["step"])
        if self.inputs.bar is not None:
            self.inputs.bar.set_postfix(loss=f"{row['mi_loss']:.3f}")

    # ----------------------------------------------------------------- checkpoints
    def _tuned_arrays(self, before: Any) -> dict:
        """The learner phase's in-task arrays: the tuned run state (and ``before``)."""
        return dict(self.state.arrays(), **({} if before is None else {"before": before}))

    def _hook(self, t: int, t0: float, log: dict, arrays, mist_steps):
        """The ``at_boundary`` of task t's loops: every ``checkpoint_every_steps`` boundaries
        and on a stop request or preemption notice, an in-task checkpoint (the loop's snapshot,
        ``arrays()``, the task log so far); after a stop request, ``interrupt.Interrupted``."""
        def at_boundary(position: dict, snapshot) -> None:
            self._boundaries += 1
            n, every = self._boundaries, self.cfg.checkpoint_every_steps
            stop = self._stop_requested() or self.ckpt.reached_preemption(t, n)
            if stop or (every and n % every == 0):
                with self.clock.checkpointing():
                    self.ckpt.save_in_task(t, n, {"loop": snapshot(), "run": arrays()}, {
                        "position": position, "mist_steps": mist_steps(),
                        "task_log": dict(log, elapsed=time.perf_counter() - t0),
                        "event_lines": self.events.lines})
            if stop:
                where = (f"{position['phase']} phase, epoch {position['epoch']}, batch "
                         f"{position['batch']}")
                raise interrupt.Interrupted(
                    f"Stopped in {self.workdir} during task {t} ({where}) after an in-task "
                    "checkpoint. Re-run the same command to resume from there.")
        return at_boundary

    def _stop_requested(self) -> bool:
        # One process: the local signal. Several: only the preemption sync point, which every
        # host reaches at the same step (a local signal could differ by a step between hosts).
        return bool(self.stop is not None and self.stop.requested and jax.process_count() == 1)

    def _resume(self) -> None:
        restored = self.ckpt.restore()
        if restored is not None:
            saved, record = restored
            if record["class_order"] != self.record["class_order"]:
                raise ValueError("The checkpoint's class order differs from this dataset's; "
                                 "use a new --workdir.")
            self.state.load(saved, self.mesh)
            self.state.record = record
            logging.info("Resumed %s at task %d.", self.workdir, record["next_task"])
        in_task = self.ckpt.restore_in_task(self.record["next_task"])
        if in_task is not None:
            self._in_task = InTask.from_checkpoint(*in_task)
            self._boundaries = self._in_task.record["n"]
            pos = self._in_task.record["position"]
            logging.info("Resumed task %d inside its %s phase (epoch %d, batch %d).",
                         self.record["next_task"], pos["phase"], pos["epoch"], pos["batch"])

