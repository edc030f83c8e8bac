"""Why SLCA forgets on a stream: are its stored class statistics stale, or are old classes lost?

SLCA (``learners/slca.py``) keeps each class's feature mean and covariance from the task that
taught it and re-aligns the classifier on samples from them; the slow learner meanwhile moves
the backbone. After each task t this prints, for every earlier task s, the accuracy on task
s's test images of

  head        SLCA's aligned classifier (what the run reports),
  NCM stale   nearest (cosine) class mean over all seen classes, task s's means as stored,
  NCM fresh   the same with task s's means re-measured on its training images now,

and ``drift``, the mean distance between stored and re-measured means of task s, next to
``spread``, the mean distance of those classes' means from their centre. A fresh NCM far above
the stale one says the backbone still separates the old classes but their statistics no longer
describe them (the features drifted by more than the classes are apart).

Example (embedded default, SLCA alone, 3 tasks; 2.5 minutes on a 2-core CPU):
  python benchmarks/slca_drift.py --tasks 3
``--smoke`` runs configs/default.py:smoke instead (a tiny random ViT, seconds; for tests).
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

import numpy as np

from mist_jax.infra import config_files
from mist_jax.runner import train

_DEFAULT = Path(__file__).resolve().parents[1] / "configs" / "default.py"


def parse_args():
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", type=int, default=3, help="tasks to run (from the first)")
    p.add_argument("--bcb-lrscale", type=float, default=0.01, help="learner.slca.bcb_lrscale")
    p.add_argument("--train-per-class", type=int, default=0,
                   help="data.train_per_class (0: the config's)")
    p.add_argument("--smoke", action="store_true", help="configs/default.py:smoke")
    return p.parse_args()


def load_default(arg: str):
    return config_files.get_config(_DEFAULT, arg)


def ncm_accuracy(feats, labels, means):
    """% of rows whose most cosine-similar row of ``means`` is their label."""
    unit = lambda a: a / np.linalg.norm(a, axis=1, keepdims=True)
    return 100 * float(np.mean(np.argmax(unit(feats) @ unit(means).T, 1) == labels))


def main():
    args = parse_args()
    cfg = load_default("smoke" if args.smoke else "")
    with cfg.unlocked():
        cfg.learner.name, cfg.mist.enabled, cfg.compare_baseline = "slca", False, False
        cfg.learner.slca.bcb_lrscale = args.bcb_lrscale
        if args.train_per_class:
            cfg.data.train_per_class = args.train_per_class
    workdir = Path(tempfile.mkdtemp(prefix="slca_drift_"))
    try:
        run = train.Run(cfg, workdir, progress=False)
        data = run.data

        def features(split, s):
            if split == "train":
                idx, labels = data.task(s)
            else:
                lo, hi = data.ranges[s]
                keep = (data.test_labels >= lo) & (data.test_labels < hi)
                idx, labels = data.test_idx[keep], data.test_labels[keep]
            embed = run.learner.jitted("embed", run.mesh.replicated)
            return run.evaluator.features(
                run.params["backbone"], split, idx, labels,
                embed=lambda backbone, x: embed(run.learner_state, backbone, x)), labels

        print("| after task | task | head | NCM stale | NCM fresh | drift | spread |")
        print("|---|---|---|---|---|---|---|")
        for t in range(args.tasks):
            run._task(t)  # one task of the runner: SLCA's epochs, statistics, alignment
            state, seen = run.learner_state, data.ranges[t][1]
            stored = np.asarray(state.means)[:seen]
            kernel, bias = (np.asarray(state.aligned[k]) for k in ("kernel", "bias"))
            for s in range(t + 1):
                lo, hi = data.ranges[s]
                train_feats, train_labels = features("train", s)
                fresh = stored.copy()
                for c in range(lo, hi):
                    fresh[c] = train_feats[train_labels == c].mean(0)
                test_feats, test_labels = features("test", s)
                head = 100 * float(np.mean(np.argmax(test_feats @ kernel[:, :seen]
                                                     + bias[:seen], 1) == test_labels))
                drift = np.linalg.norm(stored[lo:hi] - fresh[lo:hi], axis=1).mean()
                spread = np.linalg.norm(fresh[lo:hi] - fresh[lo:hi].mean(0), axis=1).mean()
                stale_ncm = ncm_accuracy(test_feats, test_labels, stored)
                fresh_ncm = ncm_accuracy(test_feats, test_labels, fresh)
                print(f"| {t} | {s} | {head:.1f} | {stale_ncm:.1f} | {fresh_ncm:.1f} | "
                      f"{drift:.2f} | {spread:.2f} |", flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
