"""Runs -> the tables' contents: per-variant means with intervals over seeds, the paper's layout (a row per model x
method, a column pair per dataset), and paired comparisons between methods on the same problems."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from itertools import combinations

import numpy as np
import pandas as pd

from adpo_eval.methods import Methods
from adpo_eval.paper import PaperNumbers, paper_granularity
from adpo_eval.render import MISSING
from adpo_eval.runs import EvalRun
from adpo_eval.stats import mean_ci, paired_bootstrap

DATASET_ORDER = ["GSM8K", "MATH"]
PAPER_MODEL_ORDER = ["Llama-3-8B", "Gemma-3-12B", "Qwen-3-8B", "DeepSeek-Math-7B"]


def granularity_rank(granularity: str) -> tuple[int, float]:
    """Finest to coarsest: token, static:2, static:4, ..., adaptive:16, adaptive:8, ..., sequence (= adaptive:1)."""
    kind, _, num = granularity.partition(":")
    try:
        value = float(num)
    except ValueError:
        value = 0.0
    return {"token": (0, 1.0), "static": (0, value), "adaptive": (1, -value), "sequence": (2, 0.0)}.get(
        kind, (3, 0.0))


def _ordered(values: Iterable[str], preferred: Sequence[str]) -> list[str]:
    values = set(values)
    return [v for v in preferred if v in values] + sorted(values - set(preferred))


def summarize(runs: Sequence[EvalRun], methods: Methods, group_by: Sequence[str], paper: PaperNumbers,
              confidence: float) -> pd.DataFrame:
    """One row per (model, dataset, method, granularity, group): mean and CI over seeds, the paper's number."""
    cells: dict[tuple, list[EvalRun]] = defaultdict(list)
    for r in runs:
        cells[(r.model, r.dataset, r.method, r.granularity, r.group)].append(r)
    rows = []
    for (model, dataset, method, granularity, group), members in cells.items():
        ci = mean_ci([m.accuracy for m in members], confidence)
        paper_value = paper.get((methods[method].paper_name, paper_granularity(granularity), model, dataset))
        rows.append({"model": model, "dataset": dataset, "method": method, "granularity": granularity,
                     **dict(group), "accuracy": ci.estimate, "ci_low": ci.low, "ci_high": ci.high,
                     "seeds": len(members), "problems": min(len(m.correct) for m in members) or None,
                     "paper": paper_value, "runs": ";".join(sorted(str(m.path) for m in members))})
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    frame["_model"] = frame["model"].map(lambda m: (PAPER_MODEL_ORDER + [m]).index(m))
    frame["_method"] = frame["method"].map(lambda m: methods[m].rank)
    frame["_gran"] = frame["granularity"].map(granularity_rank)
    groups = [f"_g{i}" for i in range(len(group_by))]
    for col, key in zip(groups, group_by):
        frame[col] = frame[key].map(_value_rank)
    frame = frame.sort_values(["_model", "model", *groups, "_method", "_gran"]).drop(
        columns=["_model", "_method", "_gran", *groups])
    return frame.reset_index(drop=True)


def _value_rank(value: str) -> tuple[int, float, str]:
    """"-" (the base model) first, then numbers by value, then anything else by name."""
    if value == "-":
        return (0, 0.0, "")
    try:
        return (1, float(value), "")
    except ValueError:
        return (2, 0.0, value)


def main_rows(summary: pd.DataFrame, methods: Methods) -> pd.DataFrame:
    """Each method at the granularity the paper's main table reports it with, and the base model."""
    return summary[[methods.in_main_table(m, g) for m, g in zip(summary["method"], summary["granularity"])]]


def ablation_rows(summary: pd.DataFrame) -> pd.DataFrame:
    """Every method at every granularity; none unless some run is at a granularity between token and sequence."""
    trained = summary[summary["method"] != "base"]
    return trained if set(trained["granularity"]) - {"token", "sequence"} else trained.iloc[:0]


def _cell(row: pd.Series) -> str:
    if pd.isna(row["accuracy"]):
        return MISSING
    if row["seeds"] < 2 or pd.isna(row["ci_low"]):
        return f"{row['accuracy']:.1f}"
    return f"{row['accuracy']:.1f} ± {(row['ci_high'] - row['ci_low']) / 2:.1f} (n={int(row['seeds'])})"


def wide_table(summary: pd.DataFrame, methods: Methods, group_by: Sequence[str], with_granularity: bool,
               show_paper: bool) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(display table with strings, numeric table for CSV) in the paper's layout: a row per model x method (x
    granularity), per dataset our mean ± CI and the paper's number."""
    datasets = _ordered(summary["dataset"], DATASET_ORDER)
    has_paper = {ds: summary.loc[summary["dataset"] == ds, "paper"].notna().any() for ds in datasets}
    keys = ["model", *group_by, "method", "granularity"]
    display_rows, numeric_rows = [], []
    for key, block in summary.groupby(keys, sort=False):
        values = dict(zip(keys, key))
        method, granularity = values["method"], values["granularity"]
        label = {"Model": values["model"], **{k: values[k] for k in group_by},
                 "Method": methods[method].label if with_granularity else methods.variant_label(method, granularity)}
        if with_granularity:
            label["Granularity"] = granularity
        display, numeric = dict(label), dict(label)
        for ds in datasets:
            hit = block[block["dataset"] == ds]
            row = hit.iloc[0] if len(hit) else None
            display[ds] = _cell(row) if row is not None else MISSING
            for col in ("accuracy", "ci_low", "ci_high", "seeds"):
                numeric[f"{ds} {col}"] = row[col] if row is not None else None
            if show_paper and has_paper[ds]:
                paper_value = row["paper"] if row is not None else None
                display[f"{ds} (paper)"] = f"{paper_value:.2f}" if paper_value is not None and not pd.isna(
                    paper_value) else MISSING
                numeric[f"{ds} paper"] = paper_value
        display_rows.append(display)
        numeric_rows.append(numeric)
    return pd.DataFrame(display_rows), pd.DataFrame(numeric_rows)


def comparisons(runs: Sequence[EvalRun], methods: Methods, confidence: float, n_resamples: int,
                seed: int) -> pd.DataFrame:
    """Paired bootstrap for every pair of methods evaluated on the same problems (per model, dataset, group)."""
    cells: dict[tuple, dict[tuple[str, str], list[EvalRun]]] = defaultdict(lambda: defaultdict(list))
    bases = [r for r in runs if r.method == "base" and r.correct]
    for r in runs:
        if r.method != "base" and r.correct:
            cells[(r.model, r.dataset, r.group)][r.variant].append(r)
    for base in bases:  # the base model is every group's reference point
        matched = [k for k in cells if k[:2] == (base.model, base.dataset)] or [(base.model, base.dataset, base.group)]
        for key in matched:
            cells[key][base.variant].append(base)
    rows = []
    for (model, dataset, group), variants in cells.items():
        order = sorted(variants, key=lambda v: (methods[v[0]].rank, granularity_rank(v[1])))
        for b, a in combinations(order, 2):  # a is the later method: the difference is a - b
            ids = set.intersection(*(set(r.correct) for r in variants[a] + variants[b]))
            if not ids:
                continue
            ids_sorted = sorted(ids)
            runs_a, runs_b = (sorted(variants[v], key=lambda r: (r.seed is None, r.seed)) for v in (a, b))
            mat_a = np.array([[r.correct[i] for i in ids_sorted] for r in runs_a])
            mat_b = np.array([[r.correct[i] for i in ids_sorted] for r in runs_b])
            # Seed k of two methods shares its sampled pairs and data order: resample such seeds together.
            seeds_a, seeds_b = [r.seed for r in runs_a], [r.seed for r in runs_b]
            matched = len(seeds_a) > 1 and None not in seeds_a and seeds_a == seeds_b
            res = paired_bootstrap(mat_a, mat_b, confidence=confidence, n_resamples=n_resamples, seed=seed,
                                   matched_seeds=matched)
            rows.append({"model": model, "dataset": dataset, **dict(group), "A": methods.variant_label(*a),
                         "B": methods.variant_label(*b), "A accuracy": 100 * mat_a.mean(),
                         "B accuracy": 100 * mat_b.mean(), "A - B": 100 * res.difference, "ci_low": 100 * res.low,
                         "ci_high": 100 * res.high, "p_value": res.p_value, "problems": res.problems,
                         "seeds A": res.seeds_a, "seeds B": res.seeds_b, "seeds matched": matched})
    return pd.DataFrame(rows)


def runs_table(runs: Sequence[EvalRun]) -> pd.DataFrame:
    """One row per eval directory."""
    return pd.DataFrame([{"path": str(r.path), "model": r.model, "dataset": r.dataset, "method": r.method,
                          "granularity": r.granularity, "seed": r.seed, **dict(r.group), "accuracy": r.accuracy,
                          "problems": len(r.correct)} for r in runs])


def comparisons_display(frame: pd.DataFrame, confidence: float) -> pd.DataFrame:
    if frame.empty:
        return frame
    pct = f"{round(100 * confidence)}% CI"
    out = frame.rename(columns={"model": "Model", "dataset": "Dataset"}).copy()
    out["A - B"] = [f"{d:+.1f}" for d in frame["A - B"]]
    out[pct] = [f"[{lo:+.1f}, {hi:+.1f}]" for lo, hi in zip(frame["ci_low"], frame["ci_high"])]
    out["p"] = [f"{p:.3f}" for p in frame["p_value"]]
    for col in ("A accuracy", "B accuracy"):
        out[col] = [f"{v:.1f}" for v in frame[col]]
    out["seeds"] = [f"{a}/{b}" + (" matched" if m else "")
                    for a, b, m in zip(frame["seeds A"], frame["seeds B"], frame["seeds matched"])]
    out = out.drop(columns=["ci_low", "ci_high", "p_value", "seeds A", "seeds B", "seeds matched"])
    tail = ["A accuracy", "B accuracy", "A - B", pct, "p", "problems", "seeds"]
    return out[[c for c in out.columns if c not in tail] + tail]
