r"""Command line: ``python -m mist_jax.main --config configs/<file>.py --workdir DIR``.

Runs the configured class-incremental experiment into ``DIR/mist`` (``DIR/baseline`` when
``--config.mist.enabled=False``; ``DIR/<learner name>`` for a learner that tunes the backbone
itself); with ``config.compare_baseline`` it also runs the same learner without MIST into
``DIR/baseline``, then prints a summary table and writes
``DIR/accuracy_curve.png`` comparing both. Any key of the config can be overridden
(``--config.mist.select_rate=0.05``); a misspelt key is an error. Re-running the same command
resumes from the last finished task. ``--dry_run`` compiles the run's programs at their true
shapes without weights or data and writes ``DIR/plan.json`` (docs/scaling.md).
"""

from __future__ import annotations

import sys
from pathlib import Path

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output folder (created; resumed if it exists).")
_TRACEBACK = flags.DEFINE_bool("traceback", False, "Show the full traceback of a bad-input "
                                "error (a bad config value, a missing dataset, a corrupt "
                                "checkpoint) instead of its one-line message.")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "Compile every program of the run at its true "
                              "shapes with no weights and no data, print memory and FLOPs per "
                              "program and write WORKDIR/plan.json (--config.plan.accelerator "
                              "adds the fit and a time estimate; docs/scaling.md).")
flags.mark_flags_as_required(["config", "workdir"])


def run_all(config, workdir: str | Path, stop=None) -> dict[str, dict]:
    """Run the experiment (and its baseline) and return ``{run name: results}``.

    ``stop``: an ``interrupt.StopSignal`` the runs honour at step boundaries.
    Raises: ``interrupt.Interrupted`` when stopped (after a checkpoint; the message says how
    to resume).
    """
    from mist_jax import learners
    from mist_jax.runner import outputs, train
    from mist_jax.infra import sharding
    from mist_jax.infra.interrupt import run_or_stop
    from mist_jax.infra.lock import WorkdirLock

    workdir = Path(workdir)
    learner = learners.get_learner_class(config.learner.name)
    # A learner that tunes the backbone itself (even with MIST off) names its run and has no
    # baseline.
    off = config.mist.copy_and_resolve_references()
    with off.unlocked():
        off.enabled = False
    own = learner.tuning(off) is not None
    runs = [(learner.name if own else "mist" if config.mist.enabled else "baseline", config)]
    if config.compare_baseline and config.mist.enabled and not own:
        base = config.copy_and_resolve_references()
        with base.unlocked():
            base.mist.enabled = False
        runs.append(("baseline", base))
    if not sharding.is_writer():  # only process 0 writes (multi-host runs)
        return {name: run_or_stop(train.Run(cfg, workdir / name, stop=stop), name)
                for name, cfg in runs}
    lock = WorkdirLock(workdir)  # the whole folder: both runs, summary.txt, the plot
    try:
        results = {}
        for name, cfg in runs:
            logging.info("Run %r into %s", name, workdir / name)
            results[name] = run_or_stop(train.Run(cfg, workdir / name, stop=stop), name)
        if len(results) > 1:
            outputs.plot_accuracy_curves({n: r["top1_curve"] for n, r in results.items()},
                                         workdir / "accuracy_curve.png")
        table = outputs.summary_table(results, config.seed, config.data.class_order_seed)
        outputs.write_text(workdir / "summary.txt", table + "\n")
    finally:
        lock.release()
    print(table)
    return results


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if _DRY_RUN.value:
        from mist_jax.runner import plan

        plan.memory_aware_cpu_schedule()  # before the backend starts
    from mist_jax.infra import compilation_cache, logs, sharding
    from mist_jax.infra.errors import USER_ERRORS, one_line
    from mist_jax.infra.interrupt import Interrupted, StopSignal

    logs.quiet_libraries()
    sharding.initialize_distributed()  # no-op unless the environment asks for multi-host
    compilation_cache.enable()  # a re-run or resume loads the compiled programs
    stop = StopSignal().install()  # SIGINT / SIGTERM: stop at the next step boundary
    try:
        if _DRY_RUN.value:
            plan.dry_run(_CONFIG.value, _WORKDIR.value)
        else:
            run_all(_CONFIG.value, _WORKDIR.value, stop=stop)
    except Interrupted as e:
        logging.error("%s", e)
        sys.exit(130)
    except USER_ERRORS as e:
        if _TRACEBACK.value:
            raise
        # Bad input: the message names the problem and the fix; library frames add nothing.
        logging.error("%s  (--traceback shows where it was raised)", one_line(e))
        sys.exit(1)
    finally:
        stop.uninstall()


if __name__ == "__main__":
    app.run(main)
