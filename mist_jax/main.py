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

    workdir = Path(workdir)
    learner = learners.get_learner_class(config.learner.name)
    # A learner that tunes the backbone itself (e.g. dense fine-tuning) names its run.
    own = learner.tunes_backbone
    runs = [(learner.name if own else "mist" if config.mist.enabled else "baseline", config)]
    if config.compare_baseline and config.mist.enabled and not own:
        base = config.copy_and_resolve_references()
        with base.unlocked():
            base.mist.enabled = False
        runs.append(("baseline", base))
    results = {}
    for name, cfg in runs:
        logging.info("Run %r into %s", name, workdir / name)
        results[name] = train.Run(cfg, workdir / name).run()
    if not sharding.is_writer():  # only process 0 writes (multi-host runs)
        return results
    if len(results) > 1:
        outputs.plot_accuracy_curves({n: r["top1_curve"] for n, r in results.items()},
                                     workdir / "accuracy_curve.png")
    table = outputs.summary_table(results)
    outputs.write_text(workdir / "summary.txt", table + "\n")
    print(table)
    return results


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
    run_all(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
    app.run(main)
