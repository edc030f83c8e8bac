"""The class-incremental run: for each task, MIST (optional) then the learner, then evaluation.

config -> splits -> per task t: [MIST adapt] -> features -> learner.fit_task -> evaluate ->
checkpoint + outputs (ARCHITECTURE.md). All randomness of task t derives from
``(config.seed, t)``, so a run resumed from the checkpoint of task t-1 ends bit-identical to an
uninterrupted one on CPU.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tqdm
from absl import logging

from mist_jax import masks, metrics, mist, outputs
from mist_jax.checkpoint import RunCheckpointer
from mist_jax.data import sources, splits, transforms
from mist_jax.learners import compensate_drift, get_learner
from mist_jax.models import get_preprocess, load_pretrained, tiny_vit


@dataclass
class TaskData:
    """The images of one run, subsampled and remapped once (labels = class-order positions)."""

    train: sources.ImageSet
    train_idx: np.ndarray  # indices into train (the per-class subsample)
    train_labels: np.ndarray  # remapped labels of train_idx
    test: sources.ImageSet
    test_idx: np.ndarray
    test_labels: np.ndarray
    order: np.ndarray
    ranges: list[tuple[int, int]]


def load_data(cfg: ml_collections.ConfigDict) -> TaskData:
    """Load the splits, fix the class order (MIST Sec. 4) and subsample per class.

    With ``data.eval_split == "validation"`` the evaluation images are a seeded 20% of each
    class's training images, and training uses the other 80% (hyperparameter search).
    Raises: FileNotFoundError / ValueError from ``sources.load_dataset``.
    """
    d = cfg.data
    kw = dict(data_dir=d.data_dir or None, manual_dir=d.manual_dir or None)
    train = sources.load_dataset(d.name, "train", **kw)
    order = splits.class_order(train.num_classes, d.class_order_seed)
    if d.eval_split == "validation":
        tr, va = splits.per_class_split(train.labels, 0.8, seed=cfg.seed)
        test, test_pool = train, va
        train_pool = tr
    elif d.eval_split == "test":
        test = sources.load_dataset(d.name, "test", **kw)
        train_pool, test_pool = np.arange(len(train)), np.arange(len(test))
    else:
        raise ValueError(f"data.eval_split must be 'test' or 'validation', got {d.eval_split!r}.")

    def pick(labels, pool, n):
        if not n:
            return pool
        return pool[splits.per_class_subsample(labels[pool], n, seed=cfg.seed)]

    train_idx = pick(train.labels, train_pool, d.train_per_class)
    test_idx = pick(test.labels, test_pool, d.test_per_class)
    return TaskData(train, train_idx, splits.remap_labels(train.labels[train_idx], order),
                    test, test_idx, splits.remap_labels(test.labels[test_idx], order), order,
                    splits.task_ranges(train.num_classes, d.init_cls, d.increment))


def build_backbone(cfg: ml_collections.ConfigDict):
    """-> (ViT module, float32 params, preprocess fn) for ``config.model``.

    ``model.source = "tiny"`` is a 2-block random ViT for smoke tests (no pre-training).
    """
    m = cfg.model
    kw = dict(dtype=jnp.dtype(m.dtype), remat=m.remat)
    if m.source == "tiny":
        model = tiny_vit(image_size=cfg.data.image_size, **kw)
        x = jnp.zeros((1, cfg.data.image_size, cfg.data.image_size, 3))
        params = model.init(jax.random.key(cfg.seed), x)["params"]
    else:
        model, params = load_pretrained(m.source, image_size=cfg.data.image_size, **kw)
    return model, params, get_preprocess(m.preprocess)


class Run:
    """One class-incremental experiment in one workdir (resumable).

    Args:
      cfg: the locked run config (``configs/*.py``).
      workdir: output folder; an existing run there with the same config is resumed.
      progress: show a tqdm bar per MI epoch.
    """

    def __init__(self, cfg: ml_collections.ConfigDict, workdir: str | Path, progress: bool = True):
        self.cfg, self.workdir, self.progress = cfg, Path(workdir), progress
        self._bar = None
        self.data = load_data(cfg)
        self.model, backbone, self.preprocess = build_backbone(cfg)
        num_classes = self.data.train.num_classes
        out_dim = num_classes if cfg.mist.objective == "ce" else cfg.mist.proj_dim
        head = mist.init_head(jax.random.key(cfg.seed + 1), self.model.width, out_dim)
        self.params = {"backbone": backbone, "head": head}
        self.mist_state = masks.init_mist_state(self.params)
        if cfg.learner.drift_compensation and cfg.learner.name != "simplecil":
            raise ValueError("learner.drift_compensation moves class prototypes and applies to "
                             f"learner.name='simplecil' only, not {cfg.learner.name!r}.")
        self.learner = get_learner(cfg.learner.name, **_learner_kwargs(cfg))
        self.learner_state = self.learner.init(jax.random.key(cfg.seed + 2), self.model.width)
        self.adapter = None
        if cfg.mist.enabled:
            loss_fn = mist.make_loss_fn(self.model, self.preprocess, cfg.mist.objective,
                                        cfg.mist.temperature, out_dim)
            self.adapter = mist.Adapter(loss_fn, cfg.mist)
        self._features = jax.jit(
            lambda p, x: self.model.apply({"params": p}, self.preprocess(x)))
        self.record = {"next_task": 0, "acc_matrix": [], "top1_curve": [], "top5_curve": [],
                       "tasks": [], "class_order": self.data.order.tolist()}
        self.ckpt = RunCheckpointer(self.workdir / "checkpoints", cfg.to_dict())
        self._resume()
        self.events = outputs.EventLog(self.workdir)
        outputs.write_json(self.workdir / "config.json", cfg.to_dict())

    # ----------------------------------------------------------------- persistence
    def _state_tree(self) -> dict:
        return {"params": self.params,
                "mist": {"count": self.mist_state.count, "frozen": self.mist_state.frozen},
                "learner": flax.serialization.to_state_dict(self.learner_state)}

    def _resume(self) -> None:
        restored = self.ckpt.restore()
        if restored is None:
            return
        state, record = restored
        if record["class_order"] != self.record["class_order"]:
            raise ValueError("The checkpoint's class order differs from this dataset's; use a "
                             "new --workdir.")
        self.params = jax.tree_util.tree_map(jnp.asarray, state["params"])
        self.mist_state = masks.MistState(
            jax.tree_util.tree_map(jnp.asarray, state["mist"]["count"]),
            jax.tree_util.tree_map(jnp.asarray, state["mist"]["frozen"]))
        self.learner_state = flax.serialization.from_state_dict(self.learner_state,
                                                                state["learner"])
        self.record = record
        logging.info("Resumed %s at task %d.", self.workdir, record["next_task"])

    # ----------------------------------------------------------------- data
    def _batches(self, images: sources.ImageSet, idx: np.ndarray, labels: np.ndarray, batch: int,
                 seed: int | None = None, key: jax.Array | None = None, desc: str | None = None):
        """Batches of (float32[B, S, S, 3] images in [0, 1], int32[B] labels[, PRNG key]).

        With ``seed``: shuffled, with the train transform (MIST Sec. 4) drawn from
        ``np.random.default_rng(seed)``; without: in order, with the deterministic test transform.
        """
        size = self.cfg.data.image_size
        if seed is None:
            order, transform, rng = np.arange(len(idx)), transforms.test_transform(size), None
        else:
            rng = np.random.default_rng(seed)
            order = rng.permutation(len(idx))
            transform = transforms.train_transform(size, scale=tuple(self.cfg.data.train_crop_scale))
        starts = range(0, len(idx), batch)
        if desc is not None:
            starts = self._bar = tqdm.tqdm(starts, desc=desc, leave=False,
                                           disable=not self.progress)
        for b, start in enumerate(starts):
            sel = order[start:start + batch]
            out = (transform(images.take(idx[sel]), rng), labels[sel].astype(np.int32))
            yield out if key is None else out + (jax.random.fold_in(key, b),)

    def features(self, split: str, idx: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """float32[N, D] backbone features with the test transform (MIST Sec. 2.6)."""
        images = self.data.train if split == "train" else self.data.test
        feats = [np.asarray(self._features(self.params["backbone"], x)) for x, _ in
                 self._batches(images, idx, labels, self.cfg.learner.eval_batch_size)]
        return np.concatenate(feats) if feats else np.zeros((0, self.model.width), np.float32)

    # ----------------------------------------------------------------- the loop
    def run(self) -> dict:
        """Run (or finish) every task; returns the results dict also written to results.json."""
        cfg, data = self.cfg, self.data
        for t in range(self.record["next_task"], len(data.ranges)):
            self._task(t)
        self.events.close()
        self.ckpt.close()
        return outputs.finish(self.workdir, cfg, self.record)

    def _task(self, t: int) -> None:
        cfg, data = self.cfg, self.data
        lo, hi = data.ranges[t]
        t0 = time.perf_counter()
        sel = (data.train_labels >= lo) & (data.train_labels < hi)
        idx, labels = data.train_idx[sel], data.train_labels[sel]
        task_log: dict[str, Any] = {"task": t, "classes": [lo, hi], "train_images": int(sel.sum())}
        use_mist = self.adapter is not None and (cfg.mist.tasks == "all" or t == 0)
        if use_mist:
            before = self.features("train", idx, labels) if cfg.learner.drift_compensation else None
            key = jax.random.fold_in(jax.random.key(cfg.seed), t)
            bs = cfg.mist.batch_size
            epoch_batches = lambda e: self._batches(
                data.train, idx, labels, bs, seed=cfg.seed * 100003 + t * 101 + e,
                key=jax.random.fold_in(key, e),
                desc=f"task {t} MI epoch {e + 1}/{cfg.mist.epochs}" + (" (scoring)" if e == 0 else ""))
            self.params, self.mist_state, log = self.adapter.adapt(
                self.params, self.mist_state, epoch_batches, seed=cfg.seed * 1000 + t,
                on_step=lambda row: self._on_step(t, row))
            task_log.update(log)
            task_log["images_per_second"] = log["images"] * cfg.mist.epochs / (cfg.mist.epochs - 1) / max(log["seconds"], 1e-9)
        feats = self.features("train", idx, labels)
        if use_mist and cfg.learner.drift_compensation and t > 0:
            # SDC on the unit sphere, where sigma = 0.3 has the meaning of Yu et al.'s
            # normalised embeddings; the cosine classifier only uses prototype directions.
            unit = lambda x: x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
            protos = compensate_drift(unit(np.asarray(self.learner_state.prototypes)),
                                      unit(before), unit(feats), cfg.learner.drift_sigma)
            self.learner_state = self.learner_state.replace(prototypes=protos)
        self.learner_state = self.learner.fit_task(self.learner_state, feats, labels, (lo, hi))
        row, top1, top5 = self._evaluate(hi)
        rec = self.record
        rec["acc_matrix"].append(row)
        rec["top1_curve"].append(top1)
        rec["top5_curve"].append(top5)
        task_log.update(seconds=time.perf_counter() - t0, top1=top1, acc_row=row)
        rec["tasks"].append(task_log)
        rec["next_task"] = t + 1
        self.events.write({"event": "task_end", **{k: v for k, v in task_log.items()
                                                   if k != "coverage"}}, step=t)
        logging.info("task %d classes [%d, %d): top1 %.2f  row %s", t, lo, hi, top1,
                     " ".join(f"{a:.1f}" for a in row))
        self.ckpt.save(t, self._state_tree(), rec)

    def _on_step(self, t: int, row: dict) -> None:
        self.events.write(dict(row, event="mist_step", task=t), step=t * 100000 + row["step"])
        if self._bar is not None:
            self._bar.set_postfix(loss=f"{row['mi_loss']:.3f}")

    def _evaluate(self, num_seen: int) -> tuple[list[float], float, float]:
        data = self.data
        sel = data.test_labels < num_seen
        feats = self.features("test", data.test_idx[sel], data.test_labels[sel])
        logits = np.asarray(self.learner.logits(self.learner_state, feats))
        seen = [r for r in data.ranges if r[1] <= num_seen]
        row = metrics.accuracy_row(logits, data.test_labels[sel], seen)
        top1 = metrics.topk_accuracy(logits, data.test_labels[sel], 1)
        top5 = metrics.topk_accuracy(logits, data.test_labels[sel], 5)
        return row, top1, top5


def _learner_kwargs(cfg) -> dict:
    if cfg.learner.name == "ranpac":
        return {"num_projections": cfg.learner.ranpac_dim}
    return {}
