"""A study's results: collected from the finished cells, summarised (``stats``) and written as
``study.csv``, ``study.md`` (the tables as printed), ``study.json``, ``study_curves.png``
(top-1 after each task, mean ± std band per variant) and ``study_differences.png`` (paired
differences of average accuracy with 95% intervals)."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
from absl import logging  # noqa: E402

from mist_jax.infra.atomic import atomic_path, write_text  # noqa: E402
from mist_jax.study import cell_dir, cells, is_finished  # noqa: E402
from mist_jax.study.stats import METRICS, by_variant, differences  # noqa: E402


def collect(study: ml_collections.ConfigDict, workdir: str | Path,
            unreadable: list | None = None) -> list[dict]:
    """One row per finished cell: variant, seed, order, the ``stats.METRICS`` and the top-1
    curve (percent after each task). ``wall_minutes`` is the cost the cell stands for: its own
    run time plus the MIST time it reused from another cell (``mist_reused_seconds``).
    A cell whose results.json cannot be read (cut short, edited) is left out with a warning
    naming the file, and its name is appended to ``unreadable``."""
    rows = []
    for cell in cells(study):
        if not is_finished(workdir, cell):
            continue
        path = cell_dir(workdir, cell) / "results.json"
        try:
            res = json.loads(path.read_text())
            rows.append({"variant": cell.variant, "seed": cell.seed, "order": cell.order,
                         **{m: float(res[m]) for m in METRICS if m != "wall_minutes"},
                         "wall_minutes": sum(t["seconds"] + t.get("mist_reused_seconds", 0)
                                             for t in res["tasks"]) / 60,
                         "top1_curve": res["top1_curve"]})
        except (ValueError, KeyError, TypeError) as e:
            logging.warning("%s is unreadable (%s: %s); that cell is left out of the table. "
                            "Delete the file to run the cell again.", path, type(e).__name__, e)
            if unreadable is not None:
                unreadable.append(cell.name)
    return rows


def aggregate(study: ml_collections.ConfigDict, workdir: str | Path) -> dict:
    """Summaries of the finished cells, written next to them; returns the ``study.json`` dict
    (``variants``, ``differences``, ``cells``, ``missing``)."""
    workdir = Path(workdir)
    unreadable: list[str] = []
    rows = collect(study, workdir, unreadable)
    all_cells = cells(study)
    missing = [c.name for c in all_cells if not is_finished(workdir, c)]
    result = {"variants": by_variant(rows) if rows else {},
              "differences": {}, "cells": len(all_cells), "finished": len(rows),
              "missing": missing, "unreadable": unreadable, "rows": rows}
    for variant, reference in study.compare:
        try:
            result["differences"][f"{variant} - {reference}"] = differences(rows, variant,
                                                                            reference)
        except ValueError:
            continue  # not run yet
    write_text(workdir / "study.json", json.dumps(result, indent=1, default=float) + "\n")
    write_text(workdir / "study.csv", _csv(result))
    write_text(workdir / "study.md", markdown(result) + "\n")
    if rows:
        _plot_curves(rows, workdir / "study_curves.png")
    if result["differences"]:
        _plot_differences(result["differences"], workdir / "study_differences.png")
    return result


def _fmt(s: dict) -> str:
    if math.isnan(s["std"]):
        return f"{s['mean']:.2f} (n=1)"
    return f"{s['mean']:.2f} ± {s['std']:.2f} [{s['low']:.2f}, {s['high']:.2f}]"


def markdown(result: dict) -> str:
    """The variant table (mean ± std [95% interval] over repeats) and the paired-difference
    table with both tests and a one-line reading of each difference in average accuracy."""
    unreadable = result.get("unreadable") or []
    lines = [f"{result['finished']} of {result['cells']} cells finished"
             + (f" ({len(unreadable)} unreadable, left out: {', '.join(unreadable)})"
                if unreadable else "") + ".", "",
             "| variant | n | " + " | ".join(METRICS) + " |",
             "|---|---|" + "---|" * len(METRICS)]
    for v, s in result["variants"].items():
        n = s[METRICS[0]]["n"]
        lines.append(f"| {v} | {n} | " + " | ".join(_fmt(s[m]) for m in METRICS) + " |")
    if result["differences"]:
        lines += ["", "Paired differences (same seed and class order), mean ± std [95% "
                  "interval], paired t-test p / Wilcoxon p:", "",
                  "| difference | pairs | " + " | ".join(METRICS) + " |",
                  "|---|---|" + "---|" * len(METRICS)]
        for name, d in result["differences"].items():
            cells_ = [f"{_fmt(d[m])}; p={d[m]['t_p']:.3g} / {d[m]['wilcoxon_p']:.3g}"
                      for m in METRICS]
            lines.append(f"| {name} | {d['pairs']} | " + " | ".join(cells_) + " |")
        lines.append("")
        for name, d in result["differences"].items():
            a = d["average_accuracy"]
            verdict = ("significant at 5% (paired t-test)" if a["t_p"] < 0.05
                       else "not significant at 5% (paired t-test)")
            lines.append(f"- {name}: average accuracy {a['mean']:+.2f} ± {a['std']:.2f} over "
                         f"{d['pairs']} pairs, 95% interval [{a['low']:+.2f}, {a['high']:+.2f}]"
                         f", p = {a['t_p']:.3g}: {verdict}.")
    return "\n".join(lines)


def _csv(result: dict) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["kind", "name", "metric", "n", "mean", "std", "low", "high", "t_p",
                "wilcoxon_p"])
    for v, s in result["variants"].items():
        for m in METRICS:
            w.writerow(["variant", v, m] + [s[m][k] for k in ("n", "mean", "std", "low",
                                                                "high")] + ["", ""])
    for name, d in result["differences"].items():
        for m in METRICS:
            w.writerow(["difference", name, m] + [d[m][k] for k in (
                "n", "mean", "std", "low", "high", "t_p", "wilcoxon_p")])
    return buf.getvalue()


def _plot_curves(rows: list[dict], path: Path) -> None:
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for variant in dict.fromkeys(r["variant"] for r in rows):
        curves = np.asarray([r["top1_curve"] for r in rows if r["variant"] == variant])
        x = np.arange(1, curves.shape[1] + 1)
        mean, std = curves.mean(0), curves.std(0, ddof=1) if len(curves) > 1 else 0 * curves[0]
        ax.plot(x, mean, marker="o", label=f"{variant} (n={len(curves)})")
        ax.fill_between(x, mean - std, mean + std, alpha=0.2)
    ax.set_xlabel("task")
    ax.set_ylabel("top-1 accuracy (%) on classes seen")
    ax.set_title("mean ± std over repeats")
    ax.legend(fontsize=8)
    _save(fig, path)


def _plot_differences(diffs: dict, path: Path) -> None:
    names = list(diffs)
    means = [diffs[n]["average_accuracy"]["mean"] for n in names]
    err = [[m - diffs[n]["average_accuracy"]["low"] for n, m in zip(names, means)],
           [diffs[n]["average_accuracy"]["high"] - m for n, m in zip(names, means)]]
    fig, ax = plt.subplots(figsize=(5.5, 0.6 * len(names) + 1.6))
    ax.barh(names, means, xerr=np.nan_to_num(err), capsize=4)
    ax.axvline(0, color="k", lw=0.8)
    ax.set_xlabel("paired difference of average accuracy (points), 95% interval")
    _save(fig, path)


def _save(fig, path: Path) -> None:
    with atomic_path(path, suffix=".png") as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight")
    plt.close(fig)

