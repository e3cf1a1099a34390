"""Runs -> the tables' contents: per-variant means with intervals over seeds, the paper's layout (methods as rows,
model x test set as columns; under each of our rows the paper's number and ours minus the paper's where the paper
measured the same thing), and paired comparisons between methods on the same problems."""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import combinations

import numpy as np
import pandas as pd

from adpo_eval.methods import Methods
from adpo_eval.render import COLUMN_SEP, MISSING
from adpo_eval.runs import EvalRun
from adpo_eval.stats import mean_ci, paired_bootstrap

DATASET_ORDER = ["GSM8K", "MATH-500", "MATH-5000"]
PAPER_MODEL_ORDER = ["Llama-3-8B", "Gemma-3-12B", "Qwen-3-8B", "DeepSeek-Math-7B"]
# The "Row" column of a table with the paper's numbers in it.
OURS, PAPER, DIFF, OURS_ONLY = "ours", "paper", "ours − paper", "ours (not in the paper)"


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


def summarize(runs: Sequence[EvalRun], methods: Methods, group_by: Sequence[str], paper: pd.DataFrame,
              confidence: float) -> pd.DataFrame:
    """One row per (model, dataset, method, granularity, group): mean and CI over seeds, the paper's number and
    ours minus it; then a row (no accuracy, seeds 0) for each of the paper's numbers on a model and test set we ran
    that no run of ours matches, so that the tables keep the paper's shape."""
    cells: dict[tuple, list[EvalRun]] = defaultdict(list)
    for r in runs:
        cells[(r.model, r.dataset, r.method, r.granularity, r.group)].append(r)
    rows = []
    for (model, dataset, method, granularity, group), members in cells.items():
        ci = mean_ci([m.accuracy for m in members], confidence)
        rows.append({"model": model, "dataset": dataset, "method": method, "granularity": granularity,
                     **dict(group), "accuracy": ci.estimate, "ci_low": ci.low, "ci_high": ci.high,
                     "seeds": len(members), "problems": min(len(m.correct) for m in members) or None,
                     "runs": ";".join(sorted(str(m.path) for m in members))})
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    frame = _with_paper(frame, paper, methods, group_by)
    frame["_model"] = frame["model"].map(lambda m: (PAPER_MODEL_ORDER + [m]).index(m))
    frame["_method"] = frame["method"].map(lambda m: methods[m].rank)
    frame["_gran"] = frame["granularity"].map(granularity_rank)
    groups = [f"_g{i}" for i in range(len(group_by))]
    for col, key in zip(groups, group_by):
        frame[col] = frame[key].map(_value_rank)
    frame = frame.sort_values(["_model", "model", *groups, "_method", "_gran"], kind="stable").drop(
        columns=["_model", "_method", "_gran", *groups])
    return frame.reset_index(drop=True)


def _with_paper(frame: pd.DataFrame, paper: pd.DataFrame, methods: Methods, group_by: Sequence[str]) -> pd.DataFrame:
    """frame with the paper's number beside each matching row (`paper`, `diff` = ours - paper, `paper_table`, and
    `paper_rank`, the number's row in the paper's file) plus rows for the paper's numbers no run of ours matches."""
    paper = paper.assign(method=[methods.for_paper_name(m) for m in paper["method"]])
    paper = paper.reset_index(drop=True).rename(columns={"accuracy": "paper", "table": "paper_table"})
    paper["paper_rank"] = paper.index
    paper = paper.drop_duplicates(["model", "dataset", "method", "granularity"])
    ran = frame[["model", "dataset"]].drop_duplicates()
    paper = paper.merge(ran, on=["model", "dataset"])  # only where we measured the same model on the same test set
    variant = ["model", "dataset", "method", "granularity"]
    # Every group of ours on a model and test set gets the paper's rows (the base model's group, "-", if it is alone).
    trained = frame["method"] != "base"
    pair_trained = trained.groupby([frame["model"], frame["dataset"]]).transform("any")
    groups = frame.loc[trained | ~pair_trained, ["model", "dataset", *group_by]].drop_duplicates()
    paper = paper.merge(groups, on=["model", "dataset"])
    merged = frame.merge(paper, on=[*variant, *group_by], how="outer")
    merged["seeds"] = merged["seeds"].fillna(0).astype(int)
    merged["diff"] = merged["accuracy"] - merged["paper"]
    return merged


def _value_rank(value: str) -> tuple[int, float, str]:
    """"-" (the base model) first, then numbers by value, then anything else by name."""
    if value == "-":
        return (0, 0.0, "")
    try:
        return (1, float(value), "")
    except ValueError:
        return (2, 0.0, value)


def main_rows(summary: pd.DataFrame, methods: Methods) -> pd.DataFrame:
    """The base model, each method at the granularity of its main-table row, and the paper's main-table rows."""
    keep = [m == "base" or methods.in_main_table(m, g) or t == "main"
            for m, g, t in zip(summary["method"], summary["granularity"], summary["paper_table"])]
    return summary[keep]


def ablation_rows(summary: pd.DataFrame, methods: Methods) -> pd.DataFrame:
    """Every other granularity of a method (ours and the paper's ablation rows) on the models and test sets where
    we ran one; none when we ran none."""
    main = main_rows(summary, methods)
    rest = summary.drop(index=main.index)
    ours = rest[rest["accuracy"].notna()]
    if ours.empty:
        return rest.iloc[:0]
    return rest.merge(ours[["model", "dataset"]].drop_duplicates(), on=["model", "dataset"])


def _row_order(cells: pd.DataFrame, methods: Methods, group_by: Sequence[str], paper_first: bool) -> pd.DataFrame:
    """cells in the order their rows are shown: by group, then (the ablation) the paper's rows in the paper's order
    before ours, then by method and granularity. Models and test sets are columns: they do not order rows."""
    paper_rank = cells.groupby(["method", "granularity"], dropna=False)["paper_rank"].transform("min")
    keys = [(tuple(_value_rank(str(row[k])) for k in group_by),
             paper_rank.iloc[i] if paper_first and not pd.isna(paper_rank.iloc[i]) else np.inf,
             methods[row["method"]].rank, granularity_rank(row["granularity"]))
            for i, (_, row) in enumerate(cells.iterrows())]
    return cells.iloc[sorted(range(len(cells)), key=keys.__getitem__)]


@dataclass
class Layout:
    display: pd.DataFrame  # strings, as the Markdown and LaTeX tables show them
    numeric: pd.DataFrame  # the same rows and columns, numbers unrounded (the CSV)
    note: str  # what the cells are, with n stated once


def paper_layout(cells: pd.DataFrame, methods: Methods, group_by: Sequence[str], *, with_granularity: bool,
                 confidence: float) -> Layout:
    """Methods as rows, model x test set as columns ("Llama-3-8B / GSM8K"). Where the paper has numbers in the
    table, each of our rows is followed by the paper's row and ours minus the paper's."""
    cells = _row_order(cells, methods, group_by, paper_first=with_granularity)
    columns = _columns(cells)
    has_paper = bool(cells["paper"].notna().any())
    n_common = _common_seeds(cells)
    keys = [*group_by, "method", "granularity"]
    display_rows, numeric_rows = [], []
    for key, block in cells.groupby(keys, sort=False, dropna=False):
        values = dict(zip(keys, key))
        label = {k: values[k] for k in group_by}
        label["Method"] = (methods[values["method"]].label if with_granularity
                           else methods.variant_label(values["method"], values["granularity"]))
        if with_granularity:
            label["Granularity"] = values["granularity"]
        by_column = {(r.model, r.dataset): r for r in block.itertuples()}
        in_paper, ran = block["paper"].notna().any(), block["accuracy"].notna().any()
        # A variant of the paper's that we did not run keeps its place as the paper's row alone.
        kinds = ([OURS, PAPER, DIFF] if ran else [PAPER]) if in_paper else [OURS_ONLY if has_paper else OURS]
        for kind in kinds:
            shown, numbers = dict(label), dict(label)
            if has_paper:
                shown["Row"] = numbers["Row"] = kind
            for model, dataset in columns:
                name = f"{model}{COLUMN_SEP}{dataset}"
                shown[name], numbers[name] = _cell(by_column.get((model, dataset)), kind, n_common)
            display_rows.append(shown)
            numeric_rows.append(numbers)
    return Layout(pd.DataFrame(display_rows), pd.DataFrame(numeric_rows),
                  _note(cells, confidence, n_common, has_paper))


def _columns(cells: pd.DataFrame) -> list[tuple[str, str]]:
    """(model, dataset) pairs with a number of ours: models in the paper's order, then GSM8K, MATH-500, MATH-5000."""
    ours = cells[cells["accuracy"].notna()]
    models = _ordered(ours["model"], PAPER_MODEL_ORDER)
    return [(m, d) for m in models for d in _ordered(ours.loc[ours["model"] == m, "dataset"], DATASET_ORDER)]


def _common_seeds(cells: pd.DataFrame) -> int | None:
    """The number of seeds most cells with an interval have: stated once in the note, marked only where different."""
    counts = Counter(int(s) for s in cells["seeds"] if s >= 2)
    return counts.most_common(1)[0][0] if counts else None


def _cell(row, kind: str, n_common: int | None) -> tuple[str, float | None]:
    """(text, number) of one cell of a row of this kind."""
    if row is None:
        return MISSING, None
    if kind == PAPER:
        return (MISSING, None) if pd.isna(row.paper) else (f"{row.paper:.2f}", row.paper)
    if kind == DIFF:
        return (MISSING, None) if pd.isna(row.diff) else (f"{row.diff:+.1f}".replace("-", "−"), row.diff)
    if pd.isna(row.accuracy):
        return MISSING, None
    text = f"{row.accuracy:.1f}"
    if row.seeds >= 2 and not pd.isna(row.ci_low):
        text += f" ± {(row.ci_high - row.ci_low) / 2:.1f}"
        if row.seeds != n_common:
            text += f" (n={int(row.seeds)})"
    return text, row.accuracy


def _note(cells: pd.DataFrame, confidence: float, n_common: int | None, has_paper: bool) -> str:
    pct = round(100 * confidence)
    ours = cells[cells["accuracy"].notna()]
    if n_common is None:
        parts = ["Accuracy (%), one run per cell."]
    else:
        marked = ((ours["seeds"] >= 2) & (ours["seeds"] != n_common)).any()
        parts = [f"Accuracy (%): mean ± half-width of the {pct}% Student-t interval over n = {n_common} seeds"
                 + ("; (n=k): a cell over k seeds" if marked else "") + "; a value without ±: one run."]
    if has_paper:
        parts.append("paper: the paper's number (its MATH is MATH-500); ours − paper in points; a test set we ran "
                     "only in part, or the full MATH-5000, is never compared.")
    return " ".join(parts)


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
