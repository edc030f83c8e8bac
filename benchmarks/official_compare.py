"""MIST end to end: mist-jax against the authors' own loop on the embedded default's stream.

For each repeat (run seed k, class order: the authors' 1993 for k = 0, else k; as
configs/studies/embedded_main.py) and learner (SimpleCIL, RanPAC), both implementations run
with and without MIST on the same exported images, labels and class order
(``W/s<k>/stream.npz``) from the same DINOv2-S/14 weights (mist-jax's converter, written in
timm's layout with ``to_timm``; ``probe_max_abs_diff`` compares the two backbones' features):

* mist-jax: ``python -m mist_jax.main --config configs/default.py`` (``compare_baseline``
  gives the frozen run), RanPAC with the official RanPAC file's freeze rule
  (``mist.freeze_rate=0.0005``), M = ``--num-projections`` for both;
* official: ``benchmarks/official_loop.py`` under ``--torch-python`` (the zhwhu/MIST checkout
  at ``--official``, its ``models/{simplecil,ranpac}_mist.py`` imported as they are; shims
  listed in that file).

Per repeat, learner and task it records for both: the MI loss per epoch, the fraction of
backbone weights the task changed and the norm of the change, the accuracy matrix, and the
Jaccard index of the two implementations' masks per weight tensor. The masks of task 0 are
also compared on identical inputs: mist-jax scores the batches and second views the official
scoring pass used (recorded there) from the same weights and head (``mask_jaccard_task0``).
It writes ``--json`` and prints the paired differences (MIST minus frozen, average accuracy)
per implementation with mean, sd and a 95% t interval over the repeats.

  python -m venv /tmp/torchvenv && /tmp/torchvenv/bin/pip install torch==2.14.1 \\
      torchvision==0.29.1 timm numpy pillow scipy tqdm
  python benchmarks/official_compare.py --official /path/to/MIST \\
      --torch-python /tmp/torchvenv/bin/python --seeds 0,1,2,3,4 --json docs/official_compare.json

``--jax-only`` skips the official side (the test runs it at tiny shapes without torch).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LEARNER_OVERRIDES = {  # mist-jax settings matching each official file
    "simplecil": [],
    "ranpac": ["--config.learner.name=ranpac", "--config.mist.freeze_rate=0.0005"],
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--official", default="", help="checkout of github.com/zhwhu/MIST")
    p.add_argument("--torch-python", default="")
    p.add_argument("--seeds", default="0,1,2,3,4")
    p.add_argument("--learners", default="simplecil,ranpac")
    p.add_argument("--num-projections", type=int, default=2000)
    p.add_argument("--workdir", default="runs/official_compare")
    p.add_argument("--json", default="")
    p.add_argument("--config", default="configs/default.py",
                   help="mist-jax config (the test passes configs/default.py:smoke)")
    p.add_argument("--jax-only", action="store_true")
    p.add_argument("--no-run", action="store_true",
                   help="only summarise the repeats already in WORKDIR/rows.json")
    return p.parse_args(argv)


def order_of(seed: int) -> int:
    return 1993 if seed == 0 else seed


def load_config(name: str, seed: int):
    from mist_jax.infra import config_files

    path, _, arg = name.partition(":")
    cfg = config_files.get_config(ROOT / path, arg)
    cfg.seed, cfg.data.class_order_seed = seed, order_of(seed)
    return cfg


def export_stream(cfg, folder: Path) -> Path:
    """The run's images (RGB uint8 at their stored size), labels in class order, task ranges,
    the input size and 16 probe images (mist-jax's test transform) -> ``folder/stream.npz``."""
    from mist_jax.data import tasks, transforms

    d = tasks.load_data(cfg)
    rgb = lambda imgs: np.stack([transforms.to_rgb(x) for x in imgs])
    test_images = rgb(d.test.take(d.test_idx))
    probe = transforms.get_transforms(cfg.data)[1](list(test_images[:16]))
    path = folder / "stream.npz"
    np.savez_compressed(path, train_images=rgb(d.train.take(d.train_idx)),
                        train_labels=d.train_labels, test_images=test_images,
                        test_labels=d.test_labels, ranges=np.array(d.ranges), probe=probe,
                        image_size=cfg.data.image_size)
    return path


def export_backbone(cfg, folder: Path):
    """mist-jax's backbone as a timm state dict (``folder/backbone_timm.npz``); returns the
    path, the model, the params and the preprocess function."""
    from mist_jax.models.convert.timm import to_timm
    from mist_jax.runner import build

    model, params, preprocess = build.build_backbone(cfg)
    path = folder / "backbone_timm.npz"
    np.savez(path, **{k: np.asarray(v, np.float32) for k, v in to_timm(params).items()})
    return path, model, params, preprocess


def run_mist_jax(config: str, seed: int, learner: str, folder: Path, extra) -> dict:
    cmd = [sys.executable, "-m", "mist_jax.main", "--config", config, "--workdir",
           str(folder / "run"), f"--config.seed={seed}",
           f"--config.data.class_order_seed={order_of(seed)}",
           f"--config.mist.cache_dir={folder / 'cache'}", *LEARNER_OVERRIDES[learner], *extra]
    start = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT)
    seconds = time.perf_counter() - start
    out = {k: json.loads((folder / "run" / k / "results.json").read_text())
           for k in ("mist", "baseline")}
    return {"results": out, "seconds": seconds, "tuned": tuned_tasks(folder / "cache")}


def tuned_tasks(cache: Path) -> list[dict]:
    """Per task, the tuned-backbone cache's arrays (params, count) in task order."""
    import orbax.checkpoint as ocp

    entries = sorted((int(p.name), p) for p in cache.glob("*/*/*") if p.name.isdigit())
    return [ocp.StandardCheckpointer().restore((p / "state").absolute()) for _, p in entries]


def jax_task_stats(tuned: list[dict], params0) -> tuple[list[dict], list[dict]]:
    """(per task {changed_fraction, change_norm}, per task {timm name: bool mask})."""
    import jax
    from mist_jax.models.convert.timm import to_timm

    stats, masks = [], []
    before = jax.tree.map(np.asarray, params0)
    count_before = jax.tree.map(lambda x: np.zeros(np.shape(x), np.int32), before)
    for entry in tuned:
        after = jax.tree.map(np.asarray, entry["params"]["backbone"])
        diffs = jax.tree.leaves(jax.tree.map(lambda a, b: a - b, after, before))
        stats.append({"changed_fraction": sum(int(np.count_nonzero(d)) for d in diffs)
                      / sum(d.size for d in diffs),
                      "change_norm": float(np.sqrt(sum(float((d.astype(np.float64) ** 2).sum())
                                                       for d in diffs)))})
        count = jax.tree.map(np.asarray, entry["mist"]["count"]["backbone"])
        masks.append(to_timm(jax.tree.map(lambda a, b: (a - b) > 0, count, count_before)))
        before, count_before = after, count
    return stats, masks


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    union = np.count_nonzero(a | b)
    return float(np.count_nonzero(a & b) / union) if union else 1.0


def official_masks(path_prefix: str, t: int, shapes: dict) -> dict:
    z = np.load(f"{path_prefix}.mask{t}.npz")
    return {n: np.unpackbits(z[n])[:int(np.prod(s))].reshape(s).astype(bool)
            for n, s in shapes.items() if n in z}


def counted(name: str) -> bool:
    """Tensors both codes select a fraction of (the official name rules: not bias / norm)."""
    return "bias" not in name and "norm" not in name


def task0_masks_on_official_batches(record: Path, model, params, preprocess) -> dict:
    """mist-jax's task-0 mask on the official scoring pass's batches, second views and
    initial projection head: {timm name: bool mask}."""
    import jax
    import jax.numpy as jnp
    from mist_jax import mist
    from mist_jax.mist import masks, sensitivity
    from mist_jax.models.convert.timm import to_timm

    z = np.load(record)
    nhwc = lambda x: np.transpose(x, (0, 2, 3, 1)).astype(np.float32)
    x, x2, y = nhwc(z["x"]), nhwc(z["x2"]), z["y"].astype(np.int32)
    edges = np.cumsum([0, *z["batch"]])
    batches = [(jnp.asarray(np.concatenate([x[a:b], x2[a:b]])), jnp.asarray(y[a:b]))
               for a, b in zip(edges[:-1], edges[1:])]
    tree = {"backbone": params, "head": {"kernel": z["head/weight"].T, "bias": z["head/bias"]}}
    loss_fn = mist.make_view_loss_fn(model, preprocess, temperature=0.07)
    scores = sensitivity.fisher_scores(loss_fn, tree, batches)
    mask = masks.select("fisher", 0.1, scores=scores, units="official")
    return to_timm(jax.tree.map(np.asarray, mask["backbone"]))


def run_official(a, stream: Path, weights: Path, learner: str, seed: int, folder: Path,
                 spr: str, record: Path | None) -> dict:
    out = folder / f"official_{spr}.json"
    cmd = [a.torch_python, str(ROOT / "benchmarks" / "official_loop.py"), "--official",
           a.official, "--stream", str(stream), "--weights", str(weights), "--learner", learner,
           "--spr", spr, "--seed", str(seed), "--num-projections", str(a.num_projections),
           "--out", str(out)] + (["--record-scoring", str(record)] if record else [])
    start = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT)
    return dict(json.loads(out.read_text()), seconds=time.perf_counter() - start,
                prefix=str(out))


def average(acc: list[list[float]]) -> float:
    return float(np.mean([np.mean(row) for row in acc]))


def interval(values: list[float]) -> dict:
    """mean, sd and the 95% t interval of the mean (``mist_jax.study.stats.summary``)."""
    from mist_jax.study import stats

    s = stats.summary(values)
    out = {"n": s["n"], "mean": s["mean"], "sd": s["std"] if s["n"] > 1 else 0.0}
    if s["n"] > 1:
        out["ci95"] = [s["low"], s["high"]]
    return out


def one_repeat(a, seed: int, learner: str, shared) -> dict:
    folder = Path(a.workdir) / f"s{seed}" / learner
    folder.mkdir(parents=True, exist_ok=True)
    cfg = load_config(a.config, seed)
    stream = export_stream(cfg, folder)
    weights, model, params, preprocess = shared
    extra = [f"--config.learner.ranpac.num_projections={a.num_projections}"]
    jx = run_mist_jax(a.config, seed, learner, folder, extra)
    stats, jmasks = jax_task_stats(jx["tuned"], params)
    row = {"seed": seed, "class_order_seed": order_of(seed), "mist_jax": {
        "mist": jx["results"]["mist"]["acc_matrix"],
        "frozen": jx["results"]["baseline"]["acc_matrix"], "seconds": jx["seconds"],
        "tasks": [dict(s, mi_loss_per_epoch=log.get("mist", {}).get("mi_loss_per_epoch",
                                                                    log.get("mi_loss_per_epoch")))
                  for s, log in zip(stats, jx["results"]["mist"]["tasks"])]}}
    if a.jax_only:
        return row
    record = folder / "scoring_task0.npz"
    mist_run = run_official(a, stream, weights, learner, seed, folder, "mist", record)
    frozen = run_official(a, stream, weights, learner, seed, folder, "none", None)
    shapes = {n: m.shape for n, m in jmasks[0].items()}
    per_task = []
    for t, jm in enumerate(jmasks):
        om = official_masks(mist_run["prefix"], t, shapes)
        per_task.append({n: jaccard(jm[n], om[n]) for n in shapes if counted(n) and n in om})
    same = task0_masks_on_official_batches(record, model, params, preprocess)
    om0 = official_masks(mist_run["prefix"], 0, shapes)
    probe = np.asarray(model.apply({"params": params}, preprocess(
        np.load(stream)["probe"])))
    row["official"] = {"mist": mist_run["acc_matrix"], "frozen": frozen["acc_matrix"],
                       "seconds": mist_run["seconds"] + frozen["seconds"],
                       "tasks": mist_run["tasks"], "versions": mist_run["versions"]}
    row["mask_jaccard_runs"] = [float(np.mean(list(j.values()))) for j in per_task]
    row["mask_jaccard_task0"] = {n: jaccard(same[n], om0[n]) for n in shapes if counted(n)}
    row["probe_max_abs_diff"] = float(np.abs(probe - np.array(mist_run["probe_features"])).max())
    return row


def summarise(rows: list[dict], learners: list[str]) -> dict:
    """Per learner and implementation: the paired gains (MIST minus frozen average accuracy)
    with their interval, and the averages, forgetting and new-task accuracy of both arms."""
    from mist_jax.runner import metrics

    out = {}
    for learner in learners:
        mine = [r for r in rows if r["learner"] == learner]
        if not mine:
            continue
        entry = {"seeds": [r["seed"] for r in mine]}
        for impl in ("mist_jax", "official"):
            if not all(impl in r for r in mine):
                continue
            gains = [average(r[impl]["mist"]) - average(r[impl]["frozen"]) for r in mine]
            entry[impl] = {"gains": gains, "gain": interval(gains),
                           "seconds": [r[impl]["seconds"] for r in mine]}
            for arm in ("mist", "frozen"):
                entry[impl][arm] = {
                    "average_accuracy": [average(r[impl][arm]) for r in mine],
                    "forgetting": [metrics.forgetting(r[impl][arm]) for r in mine],
                    "new_task_accuracy": [metrics.new_task_accuracy(r[impl][arm])
                                          for r in mine]}
        if all("mask_jaccard_task0" in r for r in mine):
            entry["mask_jaccard_task0_min"] = min(min(r["mask_jaccard_task0"].values())
                                                  for r in mine)
            entry["mask_jaccard_runs_mean"] = float(np.mean([r["mask_jaccard_runs"]
                                                             for r in mine]))
            entry["probe_max_abs_diff"] = max(r["probe_max_abs_diff"] for r in mine)
        out[learner] = entry
    return out


def table(summary: dict) -> str:
    """Markdown: per learner and implementation the paired gains and, as means over the
    repeats, forgetting and new-task accuracy with / without MIST and seconds per repeat."""
    lines = ["| learner | implementation | MIST gain per repeat (avg. acc.) | mean ± sd | 95% "
             "interval | forgetting MIST / frozen | new-task acc. MIST / frozen | seconds |",
             "|---|---|---|---|---|---|---|---|"]
    mean = lambda v: float(np.mean(v))
    for learner, entry in summary.items():
        for impl in ("official", "mist_jax"):
            if impl not in entry:
                continue
            e, g = entry[impl], entry[impl]["gain"]
            ci = "[{:+.2f}, {:+.2f}]".format(*g["ci95"]) if "ci95" in g else "-"
            lines.append(
                f"| {learner} | {impl} | " + ", ".join(f"{x:+.2f}" for x in e["gains"])
                + f" | {g['mean']:+.2f} ± {g['sd']:.2f} | {ci} | "
                f"{mean(e['mist']['forgetting']):.2f} / {mean(e['frozen']['forgetting']):.2f} | "
                f"{mean(e['mist']['new_task_accuracy']):.2f} / "
                f"{mean(e['frozen']['new_task_accuracy']):.2f} | {mean(e['seconds']):.0f} |")
    return "\n".join(lines)


def main(argv=None):
    a = parse_args(argv)
    if not (a.jax_only or a.no_run) and not (a.official and a.torch_python):
        raise SystemExit("--official and --torch-python are needed (or --jax-only).")
    seeds = [int(s) for s in a.seeds.split(",")]
    learners = a.learners.split(",")
    Path(a.workdir).mkdir(parents=True, exist_ok=True)
    saved = Path(a.workdir, "rows.json")  # finished repeats are kept: a rerun continues
    rows = json.loads(saved.read_text()) if saved.exists() else []
    todo = [(s, k) for s in seeds for k in learners
            if not any(r["seed"] == s and r["learner"] == k for r in rows)]
    if todo and not a.no_run:
        shared = export_backbone(load_config(a.config, 0), Path(a.workdir))
        for seed, learner in todo:
            rows.append(dict(one_repeat(a, seed, learner, shared), learner=learner))
            saved.write_text(json.dumps(rows))
    rows = [r for r in rows if r["seed"] in seeds and r["learner"] in learners]
    seeds = sorted({r["seed"] for r in rows})
    from mist_jax.runner.outputs import versions

    summary = summarise(rows, learners)
    official = dict(rows[0].get("official", {}).get("versions", {}) if rows else {})
    if a.official:
        official["zhwhu_MIST_commit"] = subprocess.run(
            ["git", "-C", a.official, "rev-parse", "HEAD"], capture_output=True,
            text=True).stdout.strip() or None
    result = dict(summary, seeds=seeds, rows=rows, versions=dict(versions(), official=official))
    print(table(summary))
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
