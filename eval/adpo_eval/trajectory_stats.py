"""Comparing training trajectories: methods at matched step and at matched KL, paired by seed.

`curves` has one row per (run, evaluated point): columns run, group (the run's name without its seed), seed, step,
kl and the measured values (accuracy, margins, ...). Runs of two groups with the same seed share their data (the
same samples, pairs, order and held-out split where the experiment makes the data depend on the seed), so a method's
difference from the baseline is taken seed by seed and its interval is Student-t over the seeds' differences.

At matched KL, each run's values are interpolated linearly in KL between its evaluated points (points ordered by
KL); a run contributes only where the KL was reached, never extrapolated.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from adpo_eval.stats import mean_ci


def _interval_row(values: Sequence[float], confidence: float) -> dict[str, float]:
    values = [float(v) for v in values if not pd.isna(v)]
    if not values:
        return {"mean": np.nan, "low": np.nan, "high": np.nan, "n": 0}
    ci = mean_ci(values, confidence)
    return {"mean": ci.estimate, "low": ci.low, "high": ci.high, "n": ci.n}


def group_curves(curves: pd.DataFrame, metrics: Sequence[str], confidence: float = 0.95) -> pd.DataFrame:
    """Per group and step: each metric's mean over seeds with a Student-t interval."""
    rows = []
    for (group, step), block in curves.groupby(["group", "step"], sort=True):
        row = {"group": group, "step": int(step), "seeds": int(block["seed"].nunique())}
        for metric in metrics:
            if metric in block:
                stats = _interval_row(block[metric], confidence)
                row.update({metric: stats["mean"], f"{metric}_low": stats["low"], f"{metric}_high": stats["high"]})
        rows.append(row)
    return pd.DataFrame(rows)


def matched_step(curves: pd.DataFrame, baseline: str, metrics: Sequence[str],
                 confidence: float = 0.95) -> pd.DataFrame:
    """Each group minus `baseline` at every step both evaluated, seed by seed: mean difference and interval."""
    base = curves[curves["group"] == baseline].set_index(["seed", "step"])
    rows = []
    for group, block in curves[curves["group"] != baseline].groupby("group", sort=True):
        for step, at_step in block.groupby("step", sort=True):
            for metric in metrics:
                diffs, seeds = [], []
                for _, r in at_step.iterrows():
                    key = (r["seed"], step)
                    if key in base.index and not pd.isna(r.get(metric)) and not pd.isna(base.loc[key, metric]):
                        diffs.append(float(r[metric]) - float(base.loc[key, metric]))
                        seeds.append(r["seed"])
                if not diffs:
                    continue
                stats = _interval_row(diffs, confidence)
                rows.append({"group": group, "baseline": baseline, "step": int(step), "metric": metric,
                             "seeds": len(seeds), "difference": stats["mean"], "low": stats["low"],
                             "high": stats["high"]})
    return pd.DataFrame(rows, columns=["group", "baseline", "step", "metric", "seeds", "difference", "low", "high"])


def at_kl(run_points: pd.DataFrame, metric: str, grid: Sequence[float]) -> np.ndarray:
    """One run's `metric` at each KL of `grid`, linear between its points ordered by KL; NaN beyond its range."""
    points = run_points[["kl", metric]].dropna().sort_values("kl")
    if len(points) < 2:
        return np.full(len(grid), np.nan)
    kl, values = points["kl"].to_numpy(float), points[metric].to_numpy(float)
    grid = np.asarray(grid, float)
    out = np.interp(grid, kl, values)
    out[(grid < kl[0]) | (grid > kl[-1])] = np.nan
    return out


def kl_grid(curves: pd.DataFrame, points: int) -> list[float]:
    """`points` KL values doubling up to the largest KL the runs reached: a policy's accuracy changes most in its
    first nats, so an even spacing would put nearly every value where the runs have already changed."""
    top = float(curves["kl"].max()) if len(curves) and curves["kl"].notna().any() else 0.0
    if top <= 0:
        return []
    return [top / 2.0 ** k for k in range(int(points) - 1, -1, -1)]


def matched_kl(curves: pd.DataFrame, baseline: str, metric: str, grid: Sequence[float],
               confidence: float = 0.95) -> pd.DataFrame:
    """Per group and KL of `grid`: the metric (mean over the seeds that reached that KL, interval) and its paired
    difference from `baseline` (over the seeds where both runs reached it)."""
    interpolated: dict[tuple[str, object], np.ndarray] = {}
    for (group, seed), run_points in curves.groupby(["group", "seed"], sort=True):
        interpolated[(group, seed)] = at_kl(run_points, metric, grid)
    rows = []
    for group in sorted({g for g, _ in interpolated}):
        seeds = [s for g, s in interpolated if g == group]
        for i, kl in enumerate(grid):
            own = [interpolated[(group, s)][i] for s in seeds]
            stats = _interval_row(own, confidence)
            diffs = [interpolated[(group, s)][i] - interpolated[(baseline, s)][i] for s in seeds
                     if (baseline, s) in interpolated and group != baseline]
            diff = _interval_row(diffs, confidence)
            rows.append({"group": group, "kl": float(kl), "metric": metric, "seeds": stats["n"],
                         "value": stats["mean"], "value_low": stats["low"], "value_high": stats["high"],
                         "paired_seeds": diff["n"], "difference": diff["mean"], "low": diff["low"],
                         "high": diff["high"]})
    return pd.DataFrame(rows)


def first_step_past(metrics_rows: pd.DataFrame, column: str, threshold: float) -> int | None:
    """The first logged step at which `column` exceeds `threshold` (None: never)."""
    if column not in metrics_rows:
        return None
    past = metrics_rows[metrics_rows[column] > threshold]
    return None if past.empty else int(past["step"].min())
