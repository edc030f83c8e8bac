"""Dry runs of the paper's ImageNet-R runs (ViT-B/16, 224 px) over precisions, remat and
meshes, and what they mean on each accelerator: the tables of docs/scaling.md.

Each combination is one ``python -m mist_jax.main ... --dry_run`` in a fresh process (8 fake
CPU devices for the 8-device meshes), so every number is XLA's own: per-device memory from
``memory_analysis()`` of the CPU compile (memory-aware schedule), FLOPs from
``cost_analysis()``. Fit and time per accelerator come from ``runner.plan.assess``.

  python benchmarks/plan_table.py --json docs/plan_table.json   # about 10 min on 2 cores
  python benchmarks/plan_table.py --learners ranpac --dtypes bfloat16 --remat on --meshes 1
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MESHES = {"1": (1, 1), "data8": (8, 1), "fsdp8": (8, 8)}  # name -> (devices, fsdp)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="imagenet_r")
    p.add_argument("--learners", default="simplecil,ranpac")
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--remat", default="off,on")
    p.add_argument("--meshes", default="1,data8,fsdp8", help=f"of {sorted(MESHES)}")
    p.add_argument("--mfu", type=float, default=0.4)
    p.add_argument("--jobs", type=int, default=2, help="dry runs at a time")
    p.add_argument("--json", help="write every plan and verdict here")
    return p.parse_args(argv)


def dry_run(dataset, learner, dtype, remat, mesh, mfu, folder) -> dict:
    """One dry run in its own process; returns its plan.json."""
    devices, fsdp = MESHES[mesh]
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
    work = Path(folder) / f"{learner}_{dtype}_{remat}_{mesh}"
    cmd = [sys.executable, "-m", "mist_jax.main", "--config",
           f"configs/paper.py:dataset={dataset},learner={learner}", "--workdir", str(work),
           "--dry_run", f"--config.model.dtype={dtype}", f"--config.model.remat={remat == 'on'}",
           f"--config.mesh.fsdp={fsdp}", f"--config.plan.mfu={mfu}"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return json.loads((work / "plan.json").read_text())


def main(argv=None) -> dict:
    args = parse_args(argv)
    from configs import paper
    from mist_jax.infra import accelerators
    from mist_jax.runner import plan as plan_lib

    combos = [(learner, dtype, remat, mesh) for learner in args.learners.split(",")
              for dtype in args.dtypes.split(",") for remat in args.remat.split(",")
              for mesh in args.meshes.split(",")]
    with tempfile.TemporaryDirectory() as tmp, \
            concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
        plans = list(pool.map(lambda c: dry_run(args.dataset, *c, args.mfu, tmp), combos))
    results = []
    for (learner, dtype, remat, mesh), p in zip(combos, plans):
        cfg = paper.get_config(f"dataset={args.dataset},learner={learner}")
        with cfg.unlocked():
            cfg.model.dtype = dtype
        verdicts = {a: plan_lib.assess(cfg, p, a) for a in accelerators.ACCELERATORS}
        results.append({"learner": learner, "dtype": dtype, "remat": remat, "mesh": mesh,
                        "plan": p, "verdicts": verdicts})
    gib = accelerators.GiB
    names = list(accelerators.ACCELERATORS)
    print("\nMemory per device (GiB: largest program + run state) and fit; ImageNet-R, "
          "ViT-B/16 224 px, mist.batch_size 56, eval batch 128")
    print("| learner | dtype | remat | mesh | tuning step peak | need | "
          + " | ".join(names) + " |")
    print("|---" * (6 + len(names)) + "|")
    for r in results:
        v = r["verdicts"][names[0]]
        tune = next(x for x in r["plan"]["programs"] if x["name"] == "mist tuning step")
        print(f"| {r['learner']} | {r['dtype']} | {r['remat']} | {r['mesh']} | "
              f"{tune['peak_bytes_per_device'] / gib:.2f} | {v['need'] / gib:.2f} | "
              + " | ".join("yes" if r["verdicts"][a]["fits"] else "no" for a in names) + " |")
    print(f"\nDevice compute per run (hours at {args.mfu:.0%} MFU; one device of each; "
          "GFLOP per image of the MIST tuning step)")
    print("| learner | dtype | remat | GFLOP/img | " + " | ".join(names) + " |")
    print("|---" * (4 + len(names)) + "|")
    for r in results:
        if r["mesh"] != "1":
            continue
        tune = next(x for x in r["plan"]["programs"] if x["name"] == "mist tuning step")
        print(f"| {r['learner']} | {r['dtype']} | {r['remat']} | "
              f"{tune['flops_per_image'] / 1e9:.0f} | "
              + " | ".join(f"{r['verdicts'][a]['estimated_seconds']['run'] / 3600:.2f}"
                           for a in names) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    return {"results": results}


if __name__ == "__main__":
    main()
