r"""MIST vs the same learner without MIST over several seeds: paired differences with spread.

Runs ``python -m mist_jax.main --config CONFIG --workdir ROOT/seed<S> --config.seed=<S>`` for
each seed (the config must have ``compare_baseline = True``; runs already finished are reused,
so the script resumes), then prints, per metric, the mean and sample standard deviation of
each arm and of the paired difference (MIST - baseline), its 95% t confidence interval and a
paired t-test (scipy.stats). ``--config.seed`` changes the per-class subsample, augmentation,
head init, drop masks and batch order; the class order stays ``data.class_order_seed``.

  .venv/bin/python scripts/seed_study.py --seeds 0 1 2 3 4 --root runs/seeds [-- --config.x=y]

Writes ``ROOT/study.json`` with every seed's numbers and the summary.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from scipy import stats

METRICS = ("average_accuracy", "last_accuracy", "forgetting", "new_task_accuracy")


def run_seed(config: str, root: Path, seed: int, extra: list[str]) -> dict[str, dict]:
    """Both arms' results.json for one seed (running the job unless both exist)."""
    workdir = root / f"seed{seed}"
    files = {arm: workdir / arm / "results.json" for arm in ("mist", "baseline")}
    if not all(f.is_file() for f in files.values()):
        subprocess.run([sys.executable, "-m", "mist_jax.main", "--config", config,
                        "--workdir", str(workdir), f"--config.seed={seed}", *extra], check=True)
    return {arm: json.loads(f.read_text()) for arm, f in files.items()}


def summarize(per_seed: list[dict[str, dict]]) -> dict[str, dict]:
    """Per metric: mean/std of each arm and of the paired difference, 95% CI and t-test p."""
    out = {}
    for m in METRICS:
        a = np.array([r["mist"][m] for r in per_seed], float)
        b = np.array([r["baseline"][m] for r in per_seed], float)
        d = a - b
        n = len(d)
        half = stats.t.ppf(0.975, n - 1) * d.std(ddof=1) / np.sqrt(n) if n > 1 else float("nan")
        p = float(stats.ttest_rel(a, b).pvalue) if n > 1 else float("nan")
        out[m] = {"mist": [float(a.mean()), float(a.std(ddof=1)) if n > 1 else 0.0],
                  "baseline": [float(b.mean()), float(b.std(ddof=1)) if n > 1 else 0.0],
                  "difference": [float(d.mean()), float(d.std(ddof=1)) if n > 1 else 0.0],
                  "ci95": [float(d.mean() - half), float(d.mean() + half)], "p_paired_t": p,
                  "per_seed_difference": d.round(2).tolist()}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/default.py")
    p.add_argument("--root", default="runs/seeds")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("extra", nargs="*", help="more --config.* overrides (after --)")
    args = p.parse_args()
    root = Path(args.root)
    per_seed = [run_seed(args.config, root, s, args.extra) for s in args.seeds]
    summary = summarize(per_seed)
    root.mkdir(parents=True, exist_ok=True)
    (root / "study.json").write_text(json.dumps(
        {"seeds": args.seeds, "extra": args.extra, "summary": summary,
         "per_seed": [{arm: {m: r[arm][m] for m in METRICS} for arm in r} for r in per_seed]},
        indent=1))
    print(f"{len(args.seeds)} seeds {args.seeds}; mean ± sample std; difference = MIST - baseline")
    print(f"{'metric':<18} {'MIST':>15} {'baseline':>15} {'difference':>15} {'95% CI':>17} {'p':>6}")
    for m, s in summary.items():
        f = lambda x: f"{x[0]:.2f} ± {x[1]:.2f}"
        ci = f"[{s['ci95'][0]:.2f}, {s['ci95'][1]:.2f}]"
        print(f"{m:<18} {f(s['mist']):>15} {f(s['baseline']):>15} {f(s['difference']):>15} "
              f"{ci:>17} {s['p_paired_t']:>6.3f}")


if __name__ == "__main__":
    main()
