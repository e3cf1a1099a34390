"""Stage 'aggregate': finished eval directories -> the paper's tables (Markdown, CSV, LaTeX) and a granularity plot.

Each eval directory (metrics.json, predictions.jsonl, manifest.json) is one run; what it was (method, granularity,
model, dataset, seed) is read from the resolved config in its manifest. Runs that differ only in their seed are
averaged: mean with a Student-t 95% interval over seeds. Methods are compared on the same test problems with a paired
bootstrap (problems resampled, and seeds: together where both methods ran the same seeds). The paper's numbers sit
beside ours where model and dataset match.

Outputs in output_dir: main.{md,csv,tex} (method x model, one column pair per dataset), granularity.{md,csv,tex}
(the ablation, when a run has a granularity other than the main table's), comparisons.{md,csv,tex}, runs.csv (one row
per eval directory), summary.csv (tidy), granularity.png, tables.md (all of it, with notes) and manifest.json.
"""

from __future__ import annotations

import io
import json
import logging
import math
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from omegaconf import DictConfig

from adpo.config import conf_dir, stage_main
from adpo.io import DataError, atomic_write_bytes, atomic_write_text, iter_jsonl
from adpo.manifest import identity, is_complete, read_manifest, write_manifest
from adpo_eval.stats import mean_ci, paired_bootstrap

log = logging.getLogger(__name__)

METHOD_LABELS = {"base": "Base", "dpo": "DPO", "adpo": "ADPO", "cdpo": "cDPO", "cadpo": "cADPO"}
METHOD_ORDER = list(METHOD_LABELS)
# The main table's rows: each method at the granularity the paper reports it with.
MAIN_VARIANTS = {("base", "-"), ("dpo", "sequence"), ("adpo", "token"), ("cdpo", "sequence"), ("cadpo", "token")}
DATASET_LABELS = {"gsm8k": "GSM8K", "math": "MATH"}
DATASET_ORDER = ["GSM8K", "MATH"]
PAPER_MODEL_ORDER = ["Llama-3-8B", "Gemma-3-12B", "Qwen-3-8B", "DeepSeek-Math-7B"]
# group_by=auto: the config sections searched for settings that differ between runs of one method ...
AUTO_PREFIXES = ("train.", "method.", "sampling.", "pairing.")
# ... except settings that are seeds, places or the method's identity.
AUTO_EXCLUDE = re.compile(r"seed|dir|path|name$|granularity$|^method\.use_weights$")
MISSING = "–"


@dataclass
class EvalRun:
    path: Path
    method: str
    granularity: str
    model: str
    dataset: str
    seed: int | None
    accuracy: float  # percent
    correct: dict[str, float]  # problem id -> 1.0 / 0.0 (empty when predictions.jsonl is missing)
    config: dict[str, Any]
    group: tuple[tuple[str, str], ...] = field(default=())

    @property
    def variant(self) -> tuple[str, str]:
        return self.method, self.granularity


# ---------------------------------------------------------------------------------------------- naming and order

def variant_label(method: str, granularity: str) -> str:
    name = METHOD_LABELS.get(method, method)
    if (method, granularity) in MAIN_VARIANTS:
        return name
    return f"{name} ({granularity})"


def paper_granularity(granularity: str) -> str:
    """Our granularity spelling -> the paper table's ("static:8" -> "static_k8", "adaptive:4" -> "adaptive_m4")."""
    if granularity.startswith("static:"):
        return "static_k" + granularity.split(":", 1)[1]
    if granularity.startswith("adaptive:"):
        return "adaptive_m" + granularity.split(":", 1)[1]
    return granularity


def granularity_rank(granularity: str) -> tuple[int, float]:
    """Finest to coarsest: token, static:2, static:4, ..., adaptive:16, adaptive:8, ..., sequence (= adaptive:1)."""
    kind, _, num = granularity.partition(":")
    try:
        value = float(num)
    except ValueError:
        value = 0.0
    return {"token": (0, 1.0), "static": (0, value), "adaptive": (1, -value), "sequence": (2, 0.0)}.get(
        kind, (3, 0.0))


def method_family(method: str) -> str:
    """DPO is ADPO with one segment, cDPO is cADPO with one: the granularity plot draws them on one line."""
    return {"dpo": "adpo", "cdpo": "cadpo"}.get(method, method)


def _ordered(values: Iterable[str], preferred: Sequence[str]) -> list[str]:
    values = set(values)
    return [v for v in preferred if v in values] + sorted(values - set(preferred))


# ---------------------------------------------------------------------------------------------- reading runs

def _get(cfg: dict[str, Any], dotted: str, default: Any = None) -> Any:
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def _flatten(cfg: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(cfg, dict):
        return {prefix[:-1]: cfg}
    out: dict[str, Any] = {}
    for k, v in cfg.items():
        out.update(_flatten(v, f"{prefix}{k}."))
    return out


def model_label(cfg: dict[str, Any]) -> str:
    return str(_get(cfg, "model.paper_name") or _get(cfg, "model.name") or _get(cfg, "model.name_or_path") or "?")


def dataset_label(cfg: dict[str, Any]) -> str:
    if _get(cfg, "data.paper_name"):
        return str(_get(cfg, "data.paper_name"))
    if _get(cfg, "data.source") == "toy":
        return str(_get(cfg, "data.name") or "toy")
    dataset = _get(cfg, "data.dataset")
    return DATASET_LABELS.get(dataset, str(_get(cfg, "data.name") or dataset or "?"))


def find_eval_dirs(roots: Iterable[str | Path]) -> list[Path]:
    found: set[Path] = set()
    for root in roots:
        root = Path(root)
        if root.is_dir():
            found.update(m.parent for m in root.rglob("metrics.json") if (m.parent / "manifest.json").is_file())
    return sorted(found)


def load_run(path: Path) -> tuple[EvalRun | None, str | None]:
    """The run in an eval directory, or (None, why it is not a finished eval run)."""
    manifest = read_manifest(path)
    if manifest is None:
        return None, "manifest.json unreadable"
    if manifest.get("stage", "eval") != "eval":
        return None, f"not an eval directory (stage {manifest.get('stage')!r})"
    if manifest.get("status") != "complete":
        return None, f"not finished (status {manifest.get('status')!r})"
    cfg = manifest.get("config")
    if not isinstance(cfg, dict):
        raise DataError(f"{path / 'manifest.json'}: missing field 'config' (the run's resolved config)")
    is_base = cfg.get("run_name") == "base"
    method = "base" if is_base else str(_get(cfg, "method.name", "?"))
    granularity = "-" if is_base else str(_get(cfg, "method.granularity", "?"))
    correct: dict[str, float] = {}
    predictions = path / "predictions.jsonl"
    if predictions.is_file():
        for lineno, row in iter_jsonl(predictions):
            if "id" not in row or "correct" not in row:
                missing = "id" if "id" not in row else "correct"
                raise DataError(f"{predictions}:{lineno}: missing field '{missing}'")
            correct[str(row["id"])] = float(bool(row["correct"]))
    if correct:
        accuracy = 100.0 * sum(correct.values()) / len(correct)
    else:
        metrics = json.loads((path / "metrics.json").read_text())
        if "accuracy" not in metrics:
            raise DataError(f"{path / 'metrics.json'}: missing field 'accuracy'")
        value = float(metrics["accuracy"])
        accuracy = 100.0 * value if value <= 1.0 else value
    seed = cfg.get("seed")
    return EvalRun(path, method, granularity, model_label(cfg), dataset_label(cfg),
                   int(seed) if seed is not None else None, accuracy, correct, cfg), None


def varying_keys(runs: Sequence[EvalRun]) -> list[str]:
    """Settings (under AUTO_PREFIXES) that take more than one value among the seeds-aside runs of one method."""
    by_variant: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in runs:
        if r.method != "base":
            by_variant[(r.model, r.dataset, r.variant)].append(_flatten(r.config))
    keys: set[str] = set()
    for flats in by_variant.values():
        candidates = {k for f in flats for k in f if k.startswith(AUTO_PREFIXES) and not AUTO_EXCLUDE.search(k)}
        for k in candidates:
            if len({json.dumps(f.get(k), sort_keys=True, default=str) for f in flats}) > 1:
                keys.add(k)
    return sorted(keys)


def assign_groups(runs: Sequence[EvalRun], group_by: Sequence[str]) -> None:
    for r in runs:
        if r.method == "base":
            r.group = tuple((k, "-") for k in group_by)
        else:
            flat = _flatten(r.config)
            r.group = tuple((k, _fmt_value(flat.get(k))) for k in group_by)


def _fmt_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


# ---------------------------------------------------------------------------------------------- the paper's numbers

def resolve_path(path: str | Path) -> Path:
    """As given (absolute or from the working directory), else relative to the repository."""
    path = Path(path).expanduser()
    if path.is_absolute() or path.exists():
        return path
    return conf_dir().parent / path


def read_paper_numbers(path: Path) -> dict[tuple[str, str, str, str], float]:
    """(method label, paper granularity, model, dataset) -> accuracy in percent."""
    frame = pd.read_csv(path)
    needed = {"method", "granularity", "model", "dataset", "accuracy"}
    if not needed <= set(frame.columns):
        raise DataError(f"{path}: needs columns {sorted(needed)}, has {list(frame.columns)}")
    return {(r.method, r.granularity, r.model, r.dataset): float(r.accuracy) for r in frame.itertuples()}


# ---------------------------------------------------------------------------------------------- tables

def summarize(runs: Sequence[EvalRun], group_by: Sequence[str], paper: dict, confidence: float) -> pd.DataFrame:
    """One row per (model, dataset, method, granularity, group): mean and CI over seeds, the paper's number."""
    cells: dict[tuple, list[EvalRun]] = defaultdict(list)
    for r in runs:
        cells[(r.model, r.dataset, r.method, r.granularity, r.group)].append(r)
    rows = []
    for (model, dataset, method, granularity, group), members in cells.items():
        ci = mean_ci([m.accuracy for m in members], confidence)
        paper_value = paper.get((METHOD_LABELS.get(method, method), paper_granularity(granularity), model, dataset))
        rows.append({"model": model, "dataset": dataset, "method": method, "granularity": granularity,
                     **dict(group), "accuracy": ci.estimate, "ci_low": ci.low, "ci_high": ci.high,
                     "seeds": len(members), "problems": min(len(m.correct) for m in members) or None,
                     "paper": paper_value, "runs": ";".join(sorted(str(m.path) for m in members))})
    frame = pd.DataFrame(rows)
    if frame.empty:
        return frame
    frame["_model"] = frame["model"].map(lambda m: (PAPER_MODEL_ORDER + [m]).index(m))
    frame["_method"] = frame["method"].map(lambda m: (METHOD_ORDER + [m]).index(m))
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


def _cell(row: pd.Series) -> str:
    if pd.isna(row["accuracy"]):
        return MISSING
    if row["seeds"] < 2 or pd.isna(row["ci_low"]):
        return f"{row['accuracy']:.1f}"
    return f"{row['accuracy']:.1f} ± {(row['ci_high'] - row['ci_low']) / 2:.1f} (n={int(row['seeds'])})"


def wide_table(summary: pd.DataFrame, group_by: Sequence[str], with_granularity: bool,
               show_paper: bool) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(display table with strings, numeric table for CSV) in the paper's layout: a row per model x method (x
    granularity), per dataset our mean ± CI and the paper's number."""
    datasets = _ordered(summary["dataset"], DATASET_ORDER)
    has_paper = {ds: summary.loc[summary["dataset"] == ds, "paper"].notna().any() for ds in datasets}
    keys = ["model", *group_by, "method", "granularity"]
    display_rows, numeric_rows = [], []
    for key, block in summary.groupby(keys, sort=False):
        values = dict(zip(keys, key))
        label = {"Model": values["model"], **{k: values[k] for k in group_by},
                 "Method": variant_label(values["method"], values["granularity"])
                 if not with_granularity else METHOD_LABELS.get(values["method"], values["method"])}
        if with_granularity:
            label["Granularity"] = values["granularity"]
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


def comparisons(runs: Sequence[EvalRun], confidence: float, n_resamples: int, seed: int) -> pd.DataFrame:
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
        order = sorted(variants, key=lambda v: ((METHOD_ORDER + [v[0]]).index(v[0]), granularity_rank(v[1])))
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
            rows.append({"model": model, "dataset": dataset, **dict(group), "A": variant_label(*a),
                         "B": variant_label(*b), "A accuracy": 100 * mat_a.mean(), "B accuracy": 100 * mat_b.mean(),
                         "A - B": 100 * res.difference, "ci_low": 100 * res.low, "ci_high": 100 * res.high,
                         "p_value": res.p_value, "problems": res.problems, "seeds A": res.seeds_a,
                         "seeds B": res.seeds_b, "seeds matched": matched})
    return pd.DataFrame(rows)


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


# ---------------------------------------------------------------------------------------------- writers

def to_markdown(frame: pd.DataFrame) -> str:
    if frame.empty:
        return "_(no rows)_\n"
    cols = [str(c) for c in frame.columns]

    def esc(v: Any) -> str:
        return MISSING if v is None or (isinstance(v, float) and math.isnan(v)) else str(v).replace("|", "\\|")

    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(esc(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines) + "\n"


_LATEX_SPECIAL = {"&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
                  "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "\\": r"\textbackslash{}"}


def _latex_escape(value: Any) -> str:
    text = MISSING if value is None or (isinstance(value, float) and math.isnan(value)) else str(value)
    text = "".join(_LATEX_SPECIAL.get(ch, ch) for ch in text)
    return text.replace("±", r"$\pm$").replace("–", "--")


# Columns that name a row (left-aligned in LaTeX); group-by keys (dotted config keys) count too.
LABEL_COLUMNS = ("Model", "Dataset", "Method", "Granularity", "A", "B")


def _leading(columns: Iterable[Any], labels: Sequence[str]) -> Iterable[Any]:
    for c in columns:
        if str(c) not in labels and "." not in str(c):
            return
        yield c


def to_latex(frame: pd.DataFrame, caption: str = "") -> str:
    """A booktabs tabular (needs \\usepackage{booktabs})."""
    if frame.empty:
        return f"% {caption}: no rows\n"
    labels = sum(1 for _ in _leading(frame.columns, LABEL_COLUMNS))
    align = "l" * labels + "r" * (len(frame.columns) - labels)
    lines = [f"% {caption}" if caption else "%", rf"\begin{{tabular}}{{{align}}}", r"\toprule",
             " & ".join(_latex_escape(c) for c in frame.columns) + r" \\", r"\midrule"]
    lines += [" & ".join(_latex_escape(v) for v in row) + r" \\" for row in frame.itertuples(index=False)]
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def write_table(out: Path, name: str, display: pd.DataFrame, numeric: pd.DataFrame, caption: str) -> None:
    atomic_write_text(out / f"{name}.md", to_markdown(display))
    atomic_write_text(out / f"{name}.tex", to_latex(display, caption))
    atomic_write_text(out / f"{name}.csv", numeric.to_csv(index=False))


def plot_granularity(summary: pd.DataFrame, group_by: Sequence[str], path: Path) -> bool:
    """Accuracy against granularity (finest to coarsest), one panel per model x dataset; False if nothing to plot."""
    frame = summary[summary["method"] != "base"].copy()
    if frame.empty:
        return False
    frame["family"] = frame["method"].map(method_family)
    panels = [(m, d) for (m, d), block in frame.groupby(["model", "dataset"], sort=False)
              if block.groupby("family")["granularity"].nunique().max() >= 2]
    if not panels:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(panels), figsize=(4.8 * len(panels), 3.6), squeeze=False)
    for ax, (model, dataset) in zip(axes[0], panels):
        block = frame[(frame["model"] == model) & (frame["dataset"] == dataset)]
        order = sorted(block["granularity"].unique(), key=granularity_rank)
        x_of = {g: i for i, g in enumerate(order)}
        for key, line in block.groupby(["family", *group_by], sort=False):
            key = key if isinstance(key, tuple) else (key,)
            line = line.sort_values("granularity", key=lambda s: s.map(granularity_rank))
            xs = [x_of[g] for g in line["granularity"]]
            half = ((line["ci_high"] - line["ci_low"]) / 2).fillna(0).to_numpy()
            label = METHOD_LABELS.get(key[0], key[0]) + "".join(f", {k}={v}" for k, v in zip(group_by, key[1:]))
            ax.errorbar(xs, line["accuracy"], yerr=half, marker="o", capsize=3, label=label)
        base = summary[(summary["method"] == "base") & (summary["model"] == model) & (summary["dataset"] == dataset)]
        if len(base):
            ax.axhline(base["accuracy"].iloc[0], color="grey", linestyle="--", linewidth=1, label="base model")
        ax.set_xticks(range(len(order)), order, rotation=30, ha="right")
        ax.set_xlabel("granularity (finest to coarsest; sequence = DPO)")
        ax.set_ylabel("accuracy (%)")
        ax.set_title(f"{model} / {dataset}")
        ax.legend(fontsize=7)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=120)
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())
    return True


# ---------------------------------------------------------------------------------------------- the stage

def run(cfg: DictConfig) -> dict[str, Any]:
    agg = cfg.aggregate
    out = Path(cfg.output_dir)
    roots = [Path(cfg.input_dir), *(Path(p) for p in agg.extra_inputs)]
    paper_path = resolve_path(agg.paper_tables) if agg.paper_tables else None
    eval_dirs = find_eval_dirs(roots)
    inputs = [str(d) for d in eval_dirs] + ([str(paper_path)] if paper_path and paper_path.is_file() else [])
    if is_complete(out, identity(cfg, "aggregate"), inputs):
        log.info("aggregate: %s is up to date with %d eval directories; skipping", out, len(eval_dirs))
        text = (out / "tables.md").read_text() if (out / "tables.md").is_file() else ""
        if agg.print_tables and text:
            print(text, flush=True)
        return {"tables": str(out / "tables.md")}

    runs, skipped = [], []
    for d in eval_dirs:
        run_, why = load_run(d)
        if run_ is None:
            skipped.append(f"{d}: {why}")
        else:
            runs.append(run_)
    group_by = varying_keys(runs) if agg.group_by == "auto" else list(agg.group_by or [])
    assign_groups(runs, group_by)

    notes: list[str] = []
    paper: dict = {}
    if paper_path is None:
        notes.append("Paper numbers: not requested (aggregate.paper_tables=null).")
    elif not paper_path.is_file():
        notes.append(f"Paper numbers: {paper_path} not found; tables show our runs only.")
    else:
        paper = read_paper_numbers(paper_path)
    confidence = float(agg.confidence)
    pct = round(100 * confidence)

    summary = summarize(runs, group_by, paper, confidence)
    sections = [f"# Results ({cfg.get('experiment_name')})", "",
                f"{len(runs)} finished eval runs from {', '.join(str(r) for r in roots)}. Accuracy in %: mean over "
                f"seeds ± half-width of the {pct}% Student-t interval (n = seeds; one seed: no interval)."]
    if group_by:
        sections.append(f"Rows are also split by {', '.join(group_by)} (settings that differ between runs).")
    outputs: dict[str, Any] = {"runs": len(runs), "group_by": group_by}
    if not summary.empty:
        show_paper = bool(paper)
        main = summary[[(m, g) in MAIN_VARIANTS for m, g in zip(summary["method"], summary["granularity"])]]
        if not main.empty:
            display, numeric = wide_table(main, group_by, with_granularity=False, show_paper=show_paper)
            write_table(out, "main", display, numeric, "Main table: accuracy (%) by method and model")
            sections += ["", "## Main table", "", to_markdown(display)]
            outputs["main"] = "main.md"
        ablation = summary[(summary["method"] != "base")]
        if set(ablation["granularity"]) - {"token", "sequence"}:
            display, numeric = wide_table(ablation, group_by, with_granularity=True, show_paper=show_paper)
            write_table(out, "granularity", display, numeric, "Granularity ablation: accuracy (%)")
            sections += ["", "## Granularity ablation", "", to_markdown(display)]
            outputs["granularity"] = "granularity.md"
        comp = comparisons(runs, confidence, int(agg.bootstrap_resamples), int(agg.bootstrap_seed))
        if not comp.empty:
            shown = comparisons_display(comp, confidence)
            write_table(out, "comparisons", shown, comp, "Paired bootstrap on the same test problems")
            sections += ["", f"## Paired comparisons (A - B in points, {pct}% paired-bootstrap CI over problems "
                             "and seeds, two-sided p; \"matched\": both methods ran the same seeds, on the same "
                             "sampled pairs, and seeds were resampled together)", "", to_markdown(shown)]
            outputs["comparisons"] = "comparisons.md"
        if agg.plot and plot_granularity(summary, group_by, out / "granularity.png"):
            sections += ["", "Accuracy against granularity: granularity.png"]
            outputs["plot"] = "granularity.png"
        atomic_write_text(out / "summary.csv", summary.to_csv(index=False))
        runs_frame = pd.DataFrame([{"path": str(r.path), "model": r.model, "dataset": r.dataset,
                                    "method": r.method, "granularity": r.granularity, "seed": r.seed,
                                    **dict(r.group), "accuracy": r.accuracy, "problems": len(r.correct)}
                                   for r in runs])
        atomic_write_text(out / "runs.csv", runs_frame.to_csv(index=False))
    else:
        notes.append("No finished eval runs found.")
    if skipped:
        notes.append("Skipped: " + "; ".join(skipped))
    if notes:
        sections += ["", "Notes:", *(f"- {n}" for n in notes)]
    text = "\n".join(sections).rstrip() + "\n"
    atomic_write_text(out / "tables.md", text)
    outputs["tables"] = "tables.md"
    write_manifest(out, "aggregate", cfg, inputs, outputs=outputs, key=identity(cfg, "aggregate"))
    if agg.print_tables:
        print(text, flush=True)
    return outputs


main = stage_main("aggregate")(run)

if __name__ == "__main__":
    main()
