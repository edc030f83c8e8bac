r"""Command line: ``python -m mist_jax.main --config configs/<file>.py --workdir DIR``.

Runs the configured class-incremental experiment into ``DIR/mist`` (``DIR/baseline`` when
``--config.mist.enabled=False``; ``DIR/<learner name>`` for a learner that tunes the backbone
itself); with ``config.compare_baseline`` it also runs the same learner without MIST into
``DIR/baseline``, then prints a summary table and writes
``DIR/accuracy_curve.png`` comparing both. Any key of the config can be overridden
(``--config.mist.select_rate=0.05``); a misspelt key is an error. Re-running the same command
resumes from the last finished task.
"""

from __future__ import annotations

import logging as pylogging
import signal
import sys
from pathlib import Path

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (configs/*.py).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output folder (created; resumed if it exists).")
flags.mark_flags_as_required(["config", "workdir"])


def run_all(config, workdir: str | Path) -> dict[str, dict]:
    """Run the experiment (and its baseline) and return ``{run name: results}``."""
    from mist_jax import learners, outputs, sharding, train
    from mist_jax.lock import WorkdirLock

    workdir = Path(workdir)
    learner = learners.get_learner_class(config.learner.name)
    # A learner that tunes the backbone itself names its run (and has no baseline).
    own = learner.tunes_backbone
    runs = [(learner.name if own else "mist" if config.mist.enabled else "baseline", config)]
    if config.compare_baseline and config.mist.enabled and not own:
        base = config.copy_and_resolve_references()
        with base.unlocked():
            base.mist.enabled = False
        runs.append(("baseline", base))
    if not sharding.is_writer():  # only process 0 writes (multi-host runs)
        return {name: _run(train.Run(cfg, workdir / name), name) for name, cfg in runs}
    lock = WorkdirLock(workdir)  # the whole folder: both runs, summary.txt, the plot
    try:
        results = {}
        for name, cfg in runs:
            logging.info("Run %r into %s", name, workdir / name)
            results[name] = _run(train.Run(cfg, workdir / name), name)
        if len(results) > 1:
            outputs.plot_accuracy_curves({n: r["top1_curve"] for n, r in results.items()},
                                         workdir / "accuracy_curve.png")
        table = outputs.summary_table(results)
        outputs.write_text(workdir / "summary.txt", table + "\n")
    finally:
        lock.release()
    print(table)
    return results


class Interrupted(Exception):
    """SIGINT / SIGTERM stopped a run; the message says what is saved and how to resume."""


def _run(run, name: str) -> dict:
    """``run.run()``, turning an interrupt into ``Interrupted`` naming the saved tasks."""
    try:
        return run.run()
    except KeyboardInterrupt:
        done = run.record["next_task"]
        saved = f"tasks 0-{done - 1} are checkpointed" if done else "no task was finished"
        raise Interrupted(f"Interrupted in {run.workdir} ({name}) during task {done}; {saved}. "
                          "Re-run the same command to resume.") from None


class _QuietLibraries(pylogging.Filter):
    """Drop orbax's and TFDS's per-save INFO chatter; keep their warnings and errors."""

    def filter(self, record):
        noisy = ("orbax" in record.pathname or "tensorflow_datasets" in record.pathname)
        return record.levelno >= pylogging.WARNING or not noisy


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    logging.get_absl_handler().addFilter(_QuietLibraries())
    from mist_jax import sharding

    sharding.initialize_distributed()  # no-op unless the environment asks for multi-host
    signal.signal(signal.SIGTERM, _raise_interrupt)  # preemption / kill: same as Ctrl-C
    try:
        run_all(_CONFIG.value, _WORKDIR.value)
    except Interrupted as e:
        logging.error("%s", e)
        sys.exit(130)


def _raise_interrupt(signum, frame):
    del signum, frame
    raise KeyboardInterrupt


if __name__ == "__main__":
    app.run(main)
