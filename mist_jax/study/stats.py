"""Statistics of a study: per-variant mean ± std with a 95% t interval, and paired differences
with a paired t-test and a Wilcoxon signed-rank test (scipy.stats).

Pure functions over plain tables: ``rows`` is a list of dicts, one per finished cell, with the
keys ``variant``, ``seed``, ``order`` (class-order seed) and one float per metric.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy import stats

#: The metrics a study summarises (percent, except wall_minutes).
METRICS = ("average_accuracy", "last_accuracy", "forgetting", "new_task_accuracy",
           "wall_minutes")


def summary(values: Sequence[float], confidence: float = 0.95) -> dict:
    """``{"n", "mean", "std", "low", "high"}`` of ``values``: std with ddof=1 and the
    two-sided Student-t interval ``mean ± t_{(1+c)/2, n-1} std / sqrt(n)``.

    With n = 1, std and the interval are NaN (one run says nothing about spread).
    Raises: ValueError for no values.
    """
    x = np.asarray(values, np.float64)
    if x.size == 0:
        raise ValueError("summary of no values.")
    mean = float(x.mean())
    if x.size == 1:
        return {"n": 1, "mean": mean, "std": math.nan, "low": math.nan, "high": math.nan}
    std = float(x.std(ddof=1))
    half = float(stats.t.ppf((1 + confidence) / 2, x.size - 1)) * std / math.sqrt(x.size)
    return {"n": int(x.size), "mean": mean, "std": std, "low": mean - half, "high": mean + half}


def paired(diffs: Sequence[float], confidence: float = 0.95) -> dict:
    """``summary`` of paired differences plus ``t_p`` (two-sided one-sample t-test of mean 0,
    i.e. ``scipy.stats.ttest_rel``) and ``wilcoxon_p`` (two-sided signed-rank test; NaN when
    every difference is 0 or n < 2)."""
    d = np.asarray(diffs, np.float64)
    out = summary(d, confidence)
    if d.size < 2:
        return dict(out, t_p=math.nan, wilcoxon_p=math.nan)
    t_p = float(stats.ttest_1samp(d, 0.0).pvalue) if out["std"] > 0 else (
        0.0 if out["mean"] != 0 else math.nan)
    w_p = float(stats.wilcoxon(d).pvalue) if np.any(d != 0) else math.nan
    return dict(out, t_p=t_p, wilcoxon_p=w_p)


def by_variant(rows: list[dict], metrics: Sequence[str] = METRICS) -> dict[str, dict]:
    """``{variant: {metric: summary}}`` over the rows of each variant (in first-seen order)."""
    out: dict[str, dict] = {}
    for row in rows:
        out.setdefault(row["variant"], {})
    for variant in out:
        mine = [r for r in rows if r["variant"] == variant]
        out[variant] = {m: summary([r[m] for r in mine]) for m in metrics}
    return out


def differences(rows: list[dict], variant: str, reference: str,
                metrics: Sequence[str] = METRICS) -> dict:
    """Paired differences ``variant - reference`` over the (seed, order) pairs both have:
    ``{"pairs": n, metric: paired(...)}``. Raises ValueError when they share no pair."""
    ref = {(r["seed"], r["order"]): r for r in rows if r["variant"] == reference}
    pairs = [(r, ref[(r["seed"], r["order"])]) for r in rows
             if r["variant"] == variant and (r["seed"], r["order"]) in ref]
    if not pairs:
        raise ValueError(f"variants {variant!r} and {reference!r} share no finished "
                         "(seed, class order) cell.")
    return {"pairs": len(pairs),
            **{m: paired([a[m] - b[m] for a, b in pairs]) for m in metrics}}
