"""One command for a machine with an accelerator (a Colab TPU or GPU runtime, a cloud VM): what
mist-jax does there, in one JSON, in at most about 8 minutes.

  1. devices      jax.devices(): platform, kind, count; jax / jaxlib versions
  2. dry run      every program of paper.py's ImageNet-R SimpleCIL + MIST run (ViT-B/16,
                  224 px) compiled for this backend: memory per device and FLOPs
                  (``runner.plan``; on an accelerator the memory is its own compiler's)
  3. throughput   images/s and MFU of MI scoring, the MIST step and feature extraction at the
                  paper shape on 1, 2, 4, ... local devices (benchmarks/throughput.py)
  4. input        grain's supply of 224-px JPEG batches with 0 and all-but-one workers against
                  the MIST step's and feature step's demand (benchmarks/input_pipeline.py)
  5. run          a shrunk continual run end to end at 224 px: the embedded default's images
                  upsampled, two tasks, 2 MI epochs (python -m mist_jax.main)

  python benchmarks/device_check.py --json device_check.json
  python benchmarks/device_check.py --tiny          # the same plumbing on CPU in a minute

Each section's wall time is recorded; a failing section records its error and the others
still run (exit status 1 if any failed). docs/scaling.md says how to run it on Colab.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

# Several processes share the accelerator (this one, each throughput worker, the run): none may
# take 75% of its memory up front, as JAX does by default on a GPU.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
ROOT = Path(__file__).resolve().parents[1]
SECTIONS = ("devices", "dry_run", "throughput", "input", "run")
#: The shrunk run's dataset -> classes per task (two tasks).
RUN_DATA = {"mist_multi_domain": 15, "mist_mnist5k": 5}
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", default="device_check.json")
    p.add_argument("--tiny", action="store_true",
                   help="tiny shapes (a 2-block ViT at 32 px, the smoke run): for CPU and tests")
    p.add_argument("--run-data", default="mist_multi_domain", choices=sorted(RUN_DATA),
                   help="the embedded dataset of the shrunk run (mist_mnist5k: 2 MB where a "
                        "machine is reached by a small upload; 10 classes, two tasks of 5)")
    p.add_argument("--sections", default=",".join(SECTIONS),
                   help="comma-separated sections to run, in this order (a short lease: the "
                        "most wanted first; the JSON is written after each)")
    args = p.parse_args(argv)
    args.sections = args.sections.split(",")
    if unknown := set(args.sections) - set(SECTIONS):
        p.error(f"unknown sections {sorted(unknown)}; choose from {','.join(SECTIONS)}")
    return args


def devices() -> dict:
    import jax
    import jaxlib

    devs = jax.devices()
    return {"backend": jax.default_backend(), "count": len(devs),
            "kinds": sorted({d.device_kind for d in devs}), "jax": jax.__version__,
            "jaxlib": jaxlib.__version__, "processes": jax.process_count(),
            "host_cores": os.cpu_count()}


def dry_run(tiny: bool, folder: Path) -> dict:
    import jax

    from configs import default, paper
    from mist_jax.infra import accelerators
    from mist_jax.runner import plan

    cfg = (default.get_config("smoke") if tiny
           else paper.get_config("dataset=imagenet_r,learner=simplecil"))
    with cfg.unlocked():
        cfg.plan.accelerator = accelerators.from_device_kind(jax.devices()[0].device_kind) or ""
    try:
        plan.dry_run(cfg, folder / "dry_run")
    except plan.DoesNotFit as e:  # plan.json is written: the verdict is part of the check
        print(e)
    return json.loads((folder / "dry_run" / "plan.json").read_text())


def throughput(tiny: bool) -> list[dict]:
    import throughput as bench

    args = (["--model", "tiny", "--image-size", "32", "--batch", "8", "--devices", "1"] if tiny
            else ["--model", "b16", "--image-size", "224", "--batch", "56"])
    return bench.main(args)


def input_supply(tiny: bool) -> dict:
    import input_pipeline as bench

    workers = max((os.cpu_count() or 1) - 1, 1)
    args = (["--image-size", "32", "--images", "16", "--batch", "4", "--epochs", "2",
             "--workers", "0,1", "--no-demand"] if tiny
            else ["--image-size", "224", "--workers", f"0,{workers}"])
    return bench.main(args)


def shrunk_run(tiny: bool, folder: Path, data: str = "mist_multi_domain") -> dict:
    """The embedded default (DINOv2-S/14) at 224 px, two tasks (of 15 classes for
    ``mist_multi_domain``, 5 for ``mist_mnist5k``), 2 MI epochs."""
    work, per_task = folder / "run", RUN_DATA[data]
    overrides = (["--config", "configs/default.py:smoke"] if tiny else
                 ["--config", "configs/default.py", "--config.data.image_size=224",
                  f"--config.data.name={data}",
                  f"--config.data.init_cls={per_task}", f"--config.data.increment={per_task}",
                  "--config.data.train_per_class=20", "--config.data.test_per_class=20",
                  "--config.mist.epochs=2", "--config.learner.eval_batch_size=120"])
    cmd = [sys.executable, "-m", "mist_jax.main", "--workdir", str(work), *overrides,
           "--config.compare_baseline=False"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    results = json.loads((work / "mist" / "results.json").read_text())
    return {key: results[key] for key in ("acc_matrix", "top1_curve", "average_accuracy", "timing")
            if key in results} | {"tasks": len(results["acc_matrix"])}


def main(argv=None) -> dict:
    args = parse_args(argv)
    out, failed = {"tiny": args.tiny, "run_data": args.run_data}, []
    with tempfile.TemporaryDirectory() as tmp:
        sections = {"devices": devices, "dry_run": lambda: dry_run(args.tiny, Path(tmp)),
                    "throughput": lambda: throughput(args.tiny),
                    "input": lambda: input_supply(args.tiny),
                    "run": lambda: shrunk_run(args.tiny, Path(tmp), args.run_data)}
        for name in args.sections:
            section = sections[name]
            print(f"\n== {name}", flush=True)
            t0 = time.perf_counter()
            try:
                out[name] = section()
            except Exception as e:  # pylint: disable=broad-except; recorded, others still run
                traceback.print_exc()
                out[name] = {"error": f"{type(e).__name__}: {e}"}
                failed.append(name)
            out.setdefault("seconds", {})[name] = round(time.perf_counter() - t0, 1)
            Path(args.json).write_text(json.dumps(out, indent=1, default=str) + "\n")
    print(f"\nWrote {args.json}; seconds per section: {out['seconds']}"
          + (f"; FAILED: {', '.join(failed)}" if failed else ""))
    if failed:
        sys.exit(1)
    return out


if __name__ == "__main__":
    main()
