"""Wall time of one run per learner, with and without MIST, as a user runs it.

Each cell is ``python -m mist_jax.main --config configs/default.py
--config.learner.name=<learner> --config.mist.enabled=<on|off> --config.compare_baseline=False``
in a fresh process and workdir, one after another (run nothing else meanwhile). By default
every process gets an empty XLA compilation cache, so each pays its compiles as a first run on
a fresh machine does (``--warm``: the user's cache, as a second run). The table gives the
process's wall time and, from its ``results.json``, the minutes of MIST tuning, the learner's
training and the evaluation summed over tasks, with average / last accuracy, plus the machine
(CPU model, cores), jax version and date.

    python benchmarks/learner_wall.py --workdir /tmp/wall                  # all, ~1 h
    python benchmarks/learner_wall.py --workdir /tmp/wall --learners ease,l2p --mist on
    python benchmarks/learner_wall.py --workdir /tmp/wall --smoke          # tiny, seconds
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LEARNERS = ("simplecil", "ranpac", "l2p", "dualprompt", "coda_prompt", "aper", "ease", "slca")


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``) and the cores this process may use."""
    name = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name}, {len(os.sched_getaffinity(0))} cores"


def run_cell(learner: str, mist: bool, workdir: Path, config: str, warm: bool,
             extra: list[str]) -> dict:
    """Run one cell in a subprocess; returns its row. Raises RuntimeError if the run fails."""
    cmd = [sys.executable, "-m", "mist_jax.main", "--config", config,
           f"--config.learner.name={learner}", f"--config.mist.enabled={mist}",
           "--config.compare_baseline=False", "--workdir", str(workdir), *extra]
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, **({} if warm else {"MIST_JAX_XLA_CACHE": cache}))
        start = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - start
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    results = json.loads((workdir / ("mist" if mist else "baseline") / "results.json")
                         .read_text())
    phase = lambda key: sum(t.get(key, 0.0) for t in results["tasks"]) / 60
    return {"learner": learner, "mist": mist, "wall": wall / 60, "tune": phase("tune_seconds"),
            "train": phase("learner_seconds"), "eval": phase("eval_seconds"),
            "average": results["average_accuracy"], "last": results["last_accuracy"]}


def line(r: dict) -> str:
    """One markdown table row of ``run_cell``'s row (minutes and percent)."""
    return (f"| {r['learner']} | {'on' if r['mist'] else 'off'} | {r['wall']:.2f} | "
            f"{r['tune']:.2f} | {r['train']:.2f} | {r['eval']:.2f} | {r['average']:.2f} | "
            f"{r['last']:.2f} |")


def table(rows: list[dict]) -> str:
    """The markdown table of ``rows``."""
    return "\n".join(["| learner | MIST | wall min | tune min | learner min | eval min | "
                      "average | last |", "|---|---|---|---|---|---|---|---|",
                      *map(line, rows)])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", required=True, type=Path)
    parser.add_argument("--learners", default=",".join(LEARNERS))
    parser.add_argument("--mist", choices=("on", "off", "both"), default="both")
    parser.add_argument("--warm", action="store_true", help="keep the user's XLA cache")
    parser.add_argument("--smoke", action="store_true", help="configs/default.py:smoke")
    parser.add_argument("overrides", nargs="*", help="extra --config.* flags")
    args = parser.parse_args(argv)
    learners = [l for l in args.learners.split(",") if l]
    unknown = sorted(set(learners) - set(LEARNERS))
    if unknown:
        parser.error(f"unknown learners {unknown}; choose from {', '.join(LEARNERS)}.")
    modes = {"on": [True], "off": [False], "both": [True, False]}[args.mist]
    config = "configs/default.py" + (":smoke" if args.smoke else "")
    import jax  # only for its version

    print(f"{cpu_model()}; jax {jax.__version__}; {datetime.date.today()}; "
          f"{'warm' if args.warm else 'cold'} XLA cache; {config} {' '.join(args.overrides)}",
          flush=True)
    rows = []
    for learner in learners:
        for mist in modes:
            workdir = args.workdir / f"{learner}_{'mist' if mist else 'alone'}"
            if workdir.exists():
                sys.exit(f"{workdir} exists: pick another --workdir (nothing is overwritten).")
            rows.append(run_cell(learner, mist, workdir, config, args.warm, args.overrides))
            print(line(rows[-1]), flush=True)
    print(table(rows))


if __name__ == "__main__":
    main()
