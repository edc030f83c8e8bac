"""The class-incremental run: for each task, MIST (optional) then the learner, then evaluation.

config -> splits -> per task t: [MIST adapt] -> features -> learner.fit_task -> evaluate ->
checkpoint + outputs (docs/algorithm.md §1). All randomness of task t derives from seed
sequences ``(config.seed, stream, t, ...)`` (mist_jax/seeds.py), so a run resumed from the
checkpoint of task t-1 ends bit-identical to an uninterrupted one on CPU.

Scale-out (mist_jax/sharding.py): everything runs on the ``config.mesh`` device mesh with
``jax.jit`` shardings; each process transforms only its rows of every global batch (train
augmentation draws from one generator per image, so the stream does not depend on the process
or device count); batches are prefetched two deep onto the devices; only process 0 writes
results and logs, while every process takes part in the (collective) orbax checkpoints.
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

from mist_jax import masks, metrics, mist, outputs, seeds, sharding
from mist_jax.checkpoint import RunCheckpointer
from mist_jax.data import get_preprocess, sources, splits, transforms
from mist_jax.learners import compensate_drift, get_learner
from mist_jax.models import load_pretrained, tiny_vit


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
    """Load the splits, fix the class order (docs/benchmarks.md) and subsample per class.

    With ``data.eval_split == "validation"`` the evaluation images are a seeded 20% of each
    class's training images, and training uses the other 80% (hyperparameter search).
    Raises: FileNotFoundError / ValueError from ``sources.load_dataset``.
    """
    d = cfg.data
    kw = dict(data_dir=d.data_dir or None, manual_dir=d.manual_dir or None)
    train = sources.load_dataset(d.name, "train", **kw)
    order = splits.class_order(train.num_classes, d.class_order_seed)
    if d.eval_split == "validation":
        tr, va = splits.per_class_split(train.labels, 0.8, seed=seeds.sequence(cfg.seed, "split"))
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
        return pool[splits.per_class_subsample(labels[pool], n,
                                               seed=seeds.sequence(cfg.seed, "subsample"))]

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
        params = jax.jit(model.init)(seeds.key(cfg.seed, "backbone"), x)["params"]  # 1 compile, not 1/op
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
        sharding.initialize_distributed()
        self.writer = sharding.is_writer()
        self.cfg, self.workdir = cfg, Path(workdir)
        self.progress = progress and self.writer
        self._bar = None
        self.mesh = sharding.from_config(cfg)
        transforms.get_transforms(cfg.data)  # a bad data.transform fails here, not mid-task
        self.data = load_data(cfg)
        self.model, backbone, self.preprocess = build_backbone(cfg)
        num_classes = self.data.train.num_classes
        self.finetune = cfg.learner.name == "finetune"
        mist_cfg = finetune_settings(cfg.mist) if self.finetune else cfg.mist
        out_dim = num_classes if mist_cfg.objective == "ce" else mist_cfg.proj_dim
        head = mist.init_head(seeds.key(cfg.seed, "head"), self.model.width, out_dim)
        self.params = self.mesh.place({"backbone": backbone, "head": head})
        self.mist_state = masks.MistState(*self.mesh.place(tuple(
            masks.init_mist_state(self.params))))
        if cfg.learner.drift_compensation and cfg.learner.name != "simplecil":
            raise ValueError("learner.drift_compensation moves class prototypes and applies to "
                             f"learner.name='simplecil' only, not {cfg.learner.name!r}.")
        self.learner = get_learner(cfg.learner.name, **_learner_kwargs(cfg, num_classes))
        self.learner_state = self.learner.init(seeds.key(cfg.seed, "learner"), self.model.width)
        self.adapter = None
        if cfg.mist.enabled or self.finetune:
            loss_fn = mist.make_loss_fn(self.model, self.preprocess, mist_cfg.objective,
                                        mist_cfg.temperature, out_dim)
            self.adapter = mist.Adapter(loss_fn, mist_cfg, self.mesh)
        self._features = jax.jit(
            lambda p, x: self.model.apply({"params": p}, self.preprocess(x)),
            in_shardings=(self.mesh.shardings(self.params)["backbone"], None),
            out_shardings=self.mesh.replicated)
        # Test features per test image, valid while the backbone is unchanged (version).
        self._backbone_version, self._test_cache = 0, None
        self.record = {"next_task": 0, "acc_matrix": [], "top1_curve": [], "top5_curve": [],
                       "tasks": [], "class_order": self.data.order.tolist()}
        self.ckpt = RunCheckpointer(self.workdir / "checkpoints", cfg.to_dict())
        self._resume()
        self.events = outputs.EventLog(self.workdir) if self.writer else _NoLog()
        if self.writer:
            outputs.write_json(self.workdir / "config.json", cfg.to_dict())

    # ----------------------------------------------------------------- persistence
    def _state_tree(self) -> dict:
        # Replicated arrays (and the learner state, the same on every host) are saved as numpy
        # by process 0; FSDP-sharded ones collectively, each process writing its shards.
        host = lambda x: x if isinstance(x, jax.Array) and not x.is_fully_replicated else np.asarray(x)
        return jax.tree_util.tree_map(host, {
            "params": self.params,
            "mist": {"count": self.mist_state.count, "frozen": self.mist_state.frozen},
            "learner": flax.serialization.to_state_dict(self.learner_state)})

    def _resume(self) -> None:
        restored = self.ckpt.restore()
        if restored is None:
            return
        state, record = restored
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

    # ----------------------------------------------------------------- data
    def _batches(self, images: sources.ImageSet, idx: np.ndarray, labels: np.ndarray, batch: int,
                 seed: tuple[int, ...] | None = None, key: jax.Array | None = None,
                 desc: str | None = None):
        """Global batches on the mesh, prefetched 2 deep: (float32[B, S, S, 3] images in [0, 1],
        int32[B] labels[, PRNG key]).

        With ``seed = (config.seed, t, e)``: shuffled by ``seeds.rng(config.seed, "order", t, e)``,
        with the train transform (docs/benchmarks.md) of the image at shuffled position i drawn
        from ``seeds.rng(config.seed, "transform", t, e, i)``; without: in order, with the test
        transform. Each process transforms only its own rows (``MeshContext.local_rows``).
        """
        host = self._host_batches(images, idx, labels, batch, seed, key, desc)
        return sharding.prefetch(host, lambda b: self.mesh.put_batch(b[1], b[0]), size=2)

    def _host_batches(self, images, idx, labels, batch, seed, key, desc):
        """(global batch size, this process's rows of (images, labels)[, key]) per batch."""
        train_transform, test_transform = transforms.get_transforms(self.cfg.data)
        if seed is None:
            order, transform = np.arange(len(idx)), test_transform
        else:
            run_seed, *task_epoch = seed
            order = seeds.rng(run_seed, "order", *task_epoch).permutation(len(idx))
            transform = train_transform
        starts = range(0, len(idx), batch)
        if desc is not None:
            starts = self._bar = tqdm.tqdm(starts, desc=desc, leave=False,
                                           disable=not self.progress)
        for b, start in enumerate(starts):
            n = min(batch, len(idx) - start)
            rows = self.mesh.local_rows(n)
            pos = np.arange(start, start + n)[rows]
            sel = order[pos]
            picked = images.take(idx[sel])
            if seed is None:
                x = transform(picked)
            else:
                x = np.concatenate([transform([im], seeds.rng(run_seed, "transform", *task_epoch, p))
                                    for im, p in zip(picked, pos)])
            out = (x, labels[sel].astype(np.int32))
            yield n, (out if key is None else out + (jax.random.fold_in(key, b),))

    def features(self, split: str, idx: np.ndarray, labels: np.ndarray) -> np.ndarray:
        """float32[N, D] backbone features with the test transform (docs/algorithm.md §9)."""
        images = self.data.train if split == "train" else self.data.test
        feats = [np.asarray(self._features(self.params["backbone"], x)) for x, _ in
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
        cfg, data = self.cfg, self.data
        for t in range(self.record["next_task"], len(data.ranges)):
            self._task(t)
        self.events.close()
        self.ckpt.close()
        if self.writer:
            return outputs.finish(self.workdir, cfg, self.record)
        rec = self.record
        return dict(metrics.summarize(rec["acc_matrix"], rec["top1_curve"], rec["top5_curve"]),
                    tasks=rec["tasks"], class_order=rec["class_order"])

    def _task(self, t: int) -> None:
        cfg, data = self.cfg, self.data
        lo, hi = data.ranges[t]
        t0 = time.perf_counter()
        sel = (data.train_labels >= lo) & (data.train_labels < hi)
        idx, labels = data.train_idx[sel], data.train_labels[sel]
        task_log: dict[str, Any] = {"task": t, "classes": [lo, hi], "train_images": int(sel.sum())}
        use_mist = self.adapter is not None and (cfg.mist.tasks == "all" or t == 0
                                                 or self.finetune)
        if use_mist:
            before = self.features("train", idx, labels) if cfg.learner.drift_compensation else None
            bs = cfg.mist.batch_size
            epoch_batches = lambda e: self._batches(
                data.train, idx, labels, bs, seed=(cfg.seed, t, e),
                key=seeds.key(cfg.seed, "views", t, e),
                desc=f"task {t} MI epoch {e + 1}/{cfg.mist.epochs}" + (" (scoring)" if e == 0 else ""))
            self.params, self.mist_state, log = self.adapter.adapt(
                self.params, self.mist_state, epoch_batches, seed=seeds.key(cfg.seed, "drop", t),
                on_step=lambda row: self._on_step(t, row))
            self._backbone_version += 1
            task_log.update(log)
        feats = self.features("train", idx, labels)
        if use_mist and cfg.learner.drift_compensation and t > 0:
            # SDC on the unit sphere, where sigma = 0.3 has the meaning of Yu et al.'s
            # normalised embeddings; the cosine classifier only uses prototype directions.
            unit = lambda x: x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
            protos = compensate_drift(unit(np.asarray(self.learner_state.prototypes)),
                                      unit(before), unit(feats), cfg.learner.drift_sigma)
            self.learner_state = self.learner_state.replace(prototypes=protos)
        if self.finetune:
            self.learner_state = self.learner.with_classifier(
                self.learner_state, jax.device_get(self.params["head"]))
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
                                                   if k not in _PER_TENSOR}}, step=t)
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
        feats = self._test_features(np.flatnonzero(sel))
        logits = np.asarray(self.learner.logits(self.learner_state, feats))
        seen = [r for r in data.ranges if r[1] <= num_seen]
        row = metrics.accuracy_row(logits, data.test_labels[sel], seen)
        top1 = metrics.topk_accuracy(logits, data.test_labels[sel], 1)
        top5 = metrics.topk_accuracy(logits, data.test_labels[sel], 5)
        return row, top1, top5


#: Per-tensor task-log entries kept in results.json but not in the event log.
_PER_TENSOR = ("coverage", "block_selected", "score_share", "overlap_histogram")


class _NoLog:
    """The event log of processes other than 0: writes nothing."""

    def write(self, row: dict, step: int) -> None:
        del row, step

    def close(self) -> None:
        pass


def _learner_kwargs(cfg, num_classes: int) -> dict:
    if cfg.learner.name == "ranpac":
        return {"num_projections": cfg.learner.ranpac_dim}
    if cfg.learner.name == "finetune":
        return {"num_classes": num_classes}
    return {}


def finetune_settings(mist_cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """``config.mist`` turned into dense cross-entropy fine-tuning of the whole backbone and a
    classifier over all classes: every weight selected, no drop, no damping, no freezing (the
    forgetting-prone reference). Learning rates, epochs and batch size stay as configured."""
    cfg = mist_cfg.copy_and_resolve_references()
    with cfg.unlocked():
        cfg.update(objective="ce", selector="random", select_rate=1.0, drop_rate=0.0,
                   overlap_decay=1.0, bookkeeping=False)
    return cfg
