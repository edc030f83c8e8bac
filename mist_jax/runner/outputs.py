"""Run outputs in the workdir: config.json, metrics.jsonl, results.json, plots, TensorBoard.

Every file is written atomically (temp file + rename), so a crash never leaves a half-written
result; metrics.jsonl is append-only. Only this module and ``checkpoint.py`` write to disk.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any, Sequence

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from mist_jax.runner import metrics  # noqa: E402
from mist_jax.runner.timing import line as timing_line  # noqa: E402
from mist_jax.infra.atomic import atomic_path, write_text  # noqa: E402
from mist_jax.infra.checkpoint import config_diff  # noqa: E402


def jsonable(obj: Any) -> Any:
    """``obj`` as it reads back from JSON (numpy scalars as floats, tuples as lists)."""
    return json.loads(json.dumps(obj, default=float))


def check_workdir(workdir: str | Path, config: dict) -> None:
    """Refuse a workdir whose ``config.json`` records a different config (result-neutral keys
    aside), so a run never overwrites another config's results, checkpoints or not.
    Raises: ValueError naming the keys that differ and the fix; nothing is changed."""
    recorded = Path(workdir) / "config.json"
    if not recorded.is_file():
        return
    try:
        old = json.loads(recorded.read_text())
    except ValueError as e:
        raise ValueError(f"{recorded} is unreadable ({e}); it is not this program's, or was "
                         "cut short: use a new --workdir.") from e
    diff = config_diff(old, config)
    if diff:
        raise ValueError(f"{workdir} holds a run of a different config ({'; '.join(diff[:8])}"
                         f"{'; ...' if len(diff) > 8 else ''}); nothing was changed. Use a new "
                         "--workdir (or delete this one to start over).")


def write_json(path: str | Path, obj: Any) -> None:
    """Atomically write ``obj`` as indented JSON."""
    write_text(path, json.dumps(obj, indent=1, default=float))


class EventLog:
    """Append-only event log: ``<workdir>/metrics.jsonl`` plus TensorBoard scalars in
    ``<workdir>/tensorboard`` (tensorboardX; no TensorFlow needed).

    ``write(row, step)`` appends ``row`` as one JSON line and logs every numeric field as the
    scalar ``<row["event"]>/<field>`` at ``step``. ``keep_lines``: on opening, keep only the
    first lines of an existing ``metrics.jsonl`` (those the resumed checkpoint accounts for,
    ``lines`` at its save), so an interrupted task's events appear once; ``purge_step``: the
    same for TensorBoard (the first step of the resumed work).
    """

    def __init__(self, workdir: str | Path, keep_lines: int = 0, purge_step: int = 0):
        from tensorboardX import SummaryWriter

        self.path = Path(workdir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept = self.path.read_text().splitlines(keepends=True)[:keep_lines] \
            if self.path.exists() else []
        write_text(self.path, "".join(kept))  # drop lines of work no checkpoint holds
        self.lines = len(kept)
        # TensorBoard hides events at steps >= purge_step left by an interrupted process.
        self._tb = SummaryWriter(str(Path(workdir) / "tensorboard"), purge_step=purge_step)

    def write(self, row: dict, step: int) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(row, default=float) + "\n")
        self.lines += 1
        for k, v in row.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "event":
                self._tb.add_scalar(f"{row.get('event', 'run')}/{k}", v, step)
        self._tb.flush()

    def close(self) -> None:
        self._tb.close()


def _savefig(fig, path: Path) -> None:
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight")
    plt.close(fig)


def plot_accuracy_curves(curves: dict[str, Sequence[float]], path: str | Path) -> None:
    """Top-1 accuracy (%) after each task, one line per run name (e.g. MIST vs baseline)."""
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for name, curve in curves.items():
        ax.plot(range(1, len(curve) + 1), curve, marker="o", label=name)
    ax.set_xlabel("task")
    ax.set_ylabel("top-1 on all seen classes (%)")
    ax.grid(alpha=0.3)
    ax.legend()
    _savefig(fig, Path(path))


def plot_acc_matrix(acc_matrix: list[list[float]], path: str | Path) -> None:
    """Heat map of acc_matrix[i][j] (%): rows = after task i, columns = task j's classes."""
    t = len(acc_matrix)
    grid = [[row[j] if j < len(row) else float("nan") for j in range(t)] for row in acc_matrix]
    fig, ax = plt.subplots(figsize=(1 + 0.6 * t, 0.8 + 0.5 * t))
    im = ax.imshow(grid, vmin=0, vmax=100, cmap="viridis")
    for i, row in enumerate(acc_matrix):
        for j, a in enumerate(row):
            ax.text(j, i, f"{a:.0f}", ha="center", va="center", fontsize=7,
                    color="white" if a < 60 else "black")
    ax.set_xlabel("evaluated task j")
    ax.set_ylabel("after task i")
    fig.colorbar(im, ax=ax, label="top-1 (%)")
    _savefig(fig, Path(path))


def plot_mask_coverage(tasks: list[dict], path: str | Path) -> None:
    """Three panels from each task's ``mask_stats.task_summary`` numbers (also in results.json):
    per block, the selected % of the q, k, v, proj, fc1 and fc2 kernels (mean over tasks, band
    = min..max); per task, how many earlier tasks had selected the task's selected weights
    (overlap histogram, as fractions); per task, each block's share of the total MI-Fisher score.
    Does nothing when no task ran MIST."""
    rows = [t for t in tasks if t.get("block_selected")]
    if not rows:
        return
    fig, (a, b, c) = plt.subplots(1, 3, figsize=(15, 3.8))
    for role in rows[0]["block_selected"]:
        per_task = np.array([t["block_selected"][role] for t in rows], float)
        x = np.arange(per_task.shape[1])
        a.plot(x, per_task.mean(0), marker=".", label=role)
        a.fill_between(x, per_task.min(0), per_task.max(0), alpha=0.15)
    a.set(xlabel="encoder block", ylabel="selected (%) of the kernel",
          title="selection per kernel (mean over tasks)")
    a.set_ylim(bottom=0)
    a.legend(fontsize=7, ncol=2)
    width = 0.8 / len(rows)
    for i, t in enumerate(rows):
        h = np.asarray(t["overlap_histogram"], float)
        b.bar(np.arange(len(h)) + i * width, h / max(h.sum(), 1), width, label=f"task {t['task']}")
    b.set(xlabel="earlier tasks that selected the weight", ylabel="fraction of the selection",
          title="overlap with earlier tasks' masks")
    b.legend(fontsize=7)
    for t in rows:
        share = t["score_share"]
        c.plot(range(len(share["blocks"])), share["blocks"], marker=".",
               label=f"task {t['task']} (embed {100 * share['embed']:.1f}%)")
    c.set(xlabel="encoder block", ylabel="share of the total score", title="MI-Fisher score per block")
    c.legend(fontsize=7)
    _savefig(fig, Path(path))


def versions() -> dict:
    """Versions of Python and the numerical stack, for results.json."""
    import flax
    import jax
    import optax

    return {"python": platform.python_version(), "jax": jax.__version__,
            "flax": flax.__version__, "optax": optax.__version__,
            "backend": jax.default_backend(), "devices": jax.device_count(),
            "machine": platform.machine()}


class NoLog:
    """The event log of processes other than 0: writes nothing."""

    lines = 0

    def write(self, row: dict, step: int) -> None:
        del row, step

    def close(self) -> None:
        pass


def finished_results(workdir: str | Path) -> dict | None:
    """The workdir's results.json when it is there and readable, else None. A finished run
    that is started again returns it unchanged: it keeps the config that produced its numbers
    (a changed result-neutral key, e.g. ``learner.eval_batch_size``, is not recorded without
    effect)."""
    try:
        return json.loads((Path(workdir) / "results.json").read_text())
    except (OSError, ValueError):
        return None


def finish(workdir: str | Path, config, record: dict, timing: dict | None = None) -> dict:
    """Write acc_matrix.png, mask_coverage.png, accuracy_curve.png and, last (it marks the run
    finished: a run killed before it is finished again in full), results.json.

    Returns the results dict: the metrics of docs/benchmarks.md (percent) under their exact
    names, the per-task log, the class order, the backbone's provenance
    (``build.backbone_provenance``), the config, the versions and ``timing``
    (``runner.timing.summary``) when given.
    """
    workdir = Path(workdir)
    results = metrics.summarize(record["acc_matrix"], record["top1_curve"], record["top5_curve"])
    results.update(tasks=record["tasks"], class_order=record["class_order"],
                   backbone=record.get("backbone"), config=config.to_dict(), versions=versions())
    if timing is not None:
        results["timing"] = timing
    plot_acc_matrix(record["acc_matrix"], workdir / "acc_matrix.png")
    plot_mask_coverage(record["tasks"], workdir / "mask_coverage.png")
    plot_accuracy_curves({workdir.name: record["top1_curve"]}, workdir / "accuracy_curve.png")
    write_json(workdir / "results.json", results)
    return results


def summary_table(results: dict[str, dict], seed: int | None = None,
                  order: int | None = None) -> str:
    """Plain-text table: per-task top-1, then average / last accuracy and forgetting per run,
    and a last line saying how many runs stand behind each column (one, with ``seed`` and
    class ``order`` when given) and where to get error bars."""
    names = list(results)
    t = max(len(r["top1_curve"]) for r in results.values())
    width = max(10, *(len(n) for n in names))
    lines = [f"{'':<22}" + "".join(f"{n:>{width + 2}}" for n in names)]
    for i in range(t):
        cells = "".join(f"{r['top1_curve'][i]:>{width + 2}.2f}" if i < len(r["top1_curve"])
                        else f"{'':>{width + 2}}" for r in results.values())
        lines.append(f"{'top-1 after task ' + str(i):<22}{cells}")
    for key in ("average_accuracy", "last_accuracy", "forgetting", "new_task_accuracy"):
        lines.append(f"{key:<22}" + "".join(f"{r[key]:>{width + 2}.2f}" for r in results.values()))
    for name, r in results.items():
        if "timing" in r:
            lines.append(f"time of {name}: {timing_line(r['timing'])}")
    which = "" if seed is None else f" (seed {seed}, class order seed {order})"
    lines.append(f"Each column is one run{which}: one seed, no error bars. Mean ± std and paired "
                 "tests over seeds and class orders: python -m mist_jax.study (docs/usage.md, Studies).")
    return "\n".join(lines)
