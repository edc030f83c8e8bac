r"""Command line: ``python -m mist_jax.study --config configs/studies/<name>.py --workdir DIR``.

Runs every cell of the study that has not finished (each an ordinary, resumable run in
``DIR/<variant>/seed<s>_order<o>``; a failing cell is reported and the others go on), then
aggregates the finished ones into ``DIR/study.{md,csv,json}`` and two plots, and prints the
table. Re-running the same command after a kill finishes only the missing cells. Cells that
differ only in their learner (SimpleCIL+MIST and RanPAC+MIST of one seed) tune the backbone once:
the first stores MIST's per-task result in ``DIR/_mist_cache`` and the others reuse it
(``tuning_cache.TunedBackboneCache``; the same result as tuning again, tests/study/test_study.py).

  --list        print the cells (index, variant, seed, class order, finished?) and exit
  --cell K      run cell K only (a cluster array job: one task per cell, e.g. SLURM
                ``--array=0-N`` with ``--cell $SLURM_ARRAY_TASK_ID``), no aggregation
  --aggregate   only aggregate the cells finished so far

A folder whose cells ran another config is refused before any work (``study.check_workdir``).
Ctrl-C or SIGTERM stops the running cell as a run stops (in-task checkpoint, exit 130; the same
command resumes). Several study processes may share one folder: a cell another process is
running is left to it, never reported as failed.
"""

from __future__ import annotations

import dataclasses
import sys
import traceback
from pathlib import Path

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Study config (configs/studies/*.py).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Study folder (created; resumed if it exists).")
_LIST = flags.DEFINE_bool("list", False, "Print the cells and exit.")
_CELL = flags.DEFINE_integer("cell", None, "Run only this cell (see --list).")
_AGGREGATE = flags.DEFINE_bool("aggregate", False, "Only aggregate the finished cells.")
flags.mark_flags_as_required(["config", "workdir"])


@dataclasses.dataclass
class Outcome:
    """What ``run_cells`` did: ``failed`` ``[(cell name, error)]``; ``busy``: the names of the
    cells another process was running (left to it)."""

    failed: list = dataclasses.field(default_factory=list)
    busy: list = dataclasses.field(default_factory=list)


def run_cells(study, workdir: str, only: int | None = None, progress: bool = False,
              stop=None) -> Outcome:
    """Run the unfinished cells (or cell ``only``), honouring ``stop`` (an
    ``interrupt.StopSignal``) at step boundaries.
    Raises: ValueError for a bad study, a cell index out of range or a folder holding cells of
    another config; ``interrupt.Interrupted`` when stopped (the running cell checkpointed)."""
    from mist_jax import study as st
    from mist_jax.infra.interrupt import Interrupted, run_or_stop
    from mist_jax.infra.lock import WorkdirInUse
    from mist_jax.runner import train

    st.check_study(study)
    st.check_workdir(study, workdir)
    todo = st.cells(study)
    if only is not None:
        if not 0 <= only < len(todo):
            raise ValueError(f"--cell {only}: the study has cells 0..{len(todo) - 1}.")
        todo = [todo[only]]
    outcome = Outcome()
    for cell in todo:
        if st.is_finished(workdir, cell):
            logging.info("cell %d %s: finished, skipped", cell.index, cell.name)
            continue
        logging.info("cell %d %s: running", cell.index, cell.name)
        try:
            cfg = st.run_config(study, cell.variant, cell.seed, cell.order)
            if not cfg.mist.cache_dir:  # cells differing only in the learner tune once
                with cfg.unlocked():
                    cfg.mist.cache_dir = str(Path(workdir) / st.MIST_CACHE)
            run_or_stop(train.Run(cfg, st.cell_dir(workdir, cell), progress=progress,
                                  stop=stop), cell.name)
        except Interrupted:
            raise
        except WorkdirInUse:  # another study process runs it: its cell, not a failure
            logging.info("cell %d %s: another process is running it; left to it", cell.index,
                         cell.name)
            outcome.busy.append(cell.name)
        except Exception as e:  # pylint: disable=broad-except; report it, go on with the rest
            logging.error("cell %d %s failed: %s", cell.index, cell.name,
                          traceback.format_exc(limit=3))
            outcome.failed.append((cell.name, f"{type(e).__name__}: {e}"))
    return outcome


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    from mist_jax.infra import compilation_cache, logs
    from mist_jax.infra.errors import USER_ERRORS, one_line
    from mist_jax.infra.interrupt import Interrupted, StopSignal
    from mist_jax import study as st
    from mist_jax.study import report

    logs.quiet_libraries()
    compilation_cache.enable()  # cells after the first load the compiled programs
    study, workdir = _CONFIG.value, _WORKDIR.value
    stop = StopSignal().install()  # SIGINT / SIGTERM: the running cell stops as a run does
    try:
        st.check_study(study)
        st.check_workdir(study, workdir)
        if _LIST.value:
            for c in st.cells(study):
                done = "finished" if st.is_finished(workdir, c) else "-"
                print(f"{c.index}\t{c.variant}\tseed={c.seed}\torder={c.order}\t{done}")
            return
        outcome = Outcome() if _AGGREGATE.value else run_cells(study, workdir, _CELL.value,
                                                               stop=stop)
        if _CELL.value is None:
            print(report.markdown(report.aggregate(study, workdir)))
    except Interrupted as e:
        logging.error("%s", e)
        sys.exit(130)
    except USER_ERRORS as e:
        logging.error("%s", one_line(e))
        sys.exit(1)
    finally:
        stop.uninstall()
    if outcome.busy:
        logging.warning("%d cell(s) were left to another study process still running them "
                        "(%s); run --aggregate once it has finished.", len(outcome.busy),
                        ", ".join(outcome.busy))
    for name, error in outcome.failed:
        logging.error("failed cell %s: %s", name, error)
    if outcome.failed:
        sys.exit(1)


if __name__ == "__main__":
    app.run(main)
