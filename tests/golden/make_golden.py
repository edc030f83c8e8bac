"""Record the golden outputs of the runner: the smoke config's results for every registered
learner with and without MIST, each run through the CLI as a user runs it.

  .venv/bin/python tests/golden/make_golden.py [--jobs 2]

Writes ``tests/golden/<learner>[_mist].json`` (the keys ``test_golden`` compares exactly plus
the commit they came from). Re-record only on purpose: a change of these numbers is a change
of behaviour, and the commit that makes it says why.
"""

import argparse
import concurrent.futures
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
LEARNERS = ("simplecil", "ranpac", "finetune", "l2p", "dualprompt", "coda_prompt", "aper",
            "ease", "slca")
KEYS = ("acc_matrix", "top1_curve", "forgetting")
#: What the smoke config's 2-block ViT needs: prompt layers that exist.
OVERRIDES = {"dualprompt": ("--config.learner.dualprompt.g_layers=(0,)",
                            "--config.learner.dualprompt.e_layers=(1,)"),
             "coda_prompt": ("--config.learner.coda_prompt.layers=(0, 1)",
                             "--config.learner.coda_prompt.pool_size=4",
                             "--config.learner.coda_prompt.length=2")}


def cells() -> list[tuple[str, bool]]:
    """(learner, with MIST) for every golden file."""
    return [(name, mist) for name in LEARNERS for mist in (True, False)]


def cell_name(learner: str, mist: bool) -> str:
    return f"{learner}_mist" if mist else learner


def command(learner: str, mist: bool, workdir: Path) -> list[str]:
    """The CLI call of one cell: the smoke config, one learner, MIST on or off, no baseline."""
    return [sys.executable, "-m", "mist_jax.main", "--config", "configs/default.py:smoke",
            f"--config.learner.name={learner}", f"--config.mist.enabled={mist}",
            "--config.compare_baseline=False", *OVERRIDES.get(learner, ()),
            "--workdir", str(workdir)]


def run_cell(learner: str, mist: bool, root: Path) -> dict:
    """Run one cell in a fresh process; returns its results.json. Raises RuntimeError with the
    tail of stderr if the run fails."""
    wd = root / cell_name(learner, mist)
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    out = subprocess.run(command(learner, mist, wd), cwd=ROOT, env=env, capture_output=True,
                         text=True)
    if out.returncode:
        raise RuntimeError(f"{cell_name(learner, mist)} failed:\n{out.stderr[-3000:]}")
    (results,) = wd.glob("*/results.json")  # mist/, baseline/ or the learner's own name
    return json.loads(results.read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--missing", action="store_true", help="only cells without a file yet")
    args = ap.parse_args()
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                            text=True).stdout.strip()
    with tempfile.TemporaryDirectory() as tmp, \
            concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
        todo = [(l, m) for l, m in cells()
                if not (args.missing and (HERE / f"{cell_name(l, m)}.json").exists())]
        futures = {pool.submit(run_cell, l, m, Path(tmp)): (l, m) for l, m in todo}
        for fut in concurrent.futures.as_completed(futures):
            learner, mist = futures[fut]
            res = fut.result()
            golden = {k: res[k] for k in KEYS}
            golden["recorded_at"] = commit
            path = HERE / f"{cell_name(learner, mist)}.json"
            path.write_text(json.dumps(golden, indent=1) + "\n")
            print(path.name, golden["top1_curve"], flush=True)


if __name__ == "__main__":
    main()
