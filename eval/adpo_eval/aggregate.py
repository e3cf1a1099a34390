"""Stage 'aggregate': finished eval directories -> the paper's tables (Markdown, CSV, LaTeX) and a granularity plot.

Each eval directory (metrics.json, predictions.jsonl, manifest.json) is one run; what it was (method, granularity,
model, test set, seed) is read from the resolved config in its manifest, and how tables show its method from the
method config's display keys (label, family, order, main_granularity, paper_name). The test set is named exactly
(GSM8K, MATH-500, MATH-5000, or the part of one a run evaluated), and the paper's numbers (its MATH is MATH-500) sit
beside ours only on the same model and test set. Runs that differ only in their seed are averaged: mean with a
Student-t 95% interval over seeds. Methods are compared on the same test problems with a paired bootstrap (problems
resampled, and seeds: together where both methods ran the same seeds).

Outputs in output_dir, in the paper's layout (methods as rows, model x test set as columns; under a row of ours the
paper's number and ours minus it): main.{md,csv,tex}, granularity.{md,csv,tex} (the ablation: the paper's
granularities first, then any others we ran), comparisons.{md,csv,tex}, runs.csv (one row per eval directory),
summary.csv (tidy), granularity.png (ours and the paper's), tables.md (all of it, with notes) and manifest.json; and a
wandb run (job type "aggregate") with the tables and the plot.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import DictConfig

from adpo.config import stage_main
from adpo.io import DataError, atomic_write_text
from adpo.manifest import identity, is_complete, mark_running, write_manifest
from adpo.registry import stage as registered
from adpo.tracking import log_tables_and_images
from adpo_eval.methods import Methods
from adpo_eval.paper import paper_numbers, resolve_path
from adpo_eval.plot import plot_granularity
from adpo_eval.render import to_markdown, write_table
from adpo_eval.runs import EvalRun, assign_groups, find_eval_dirs, load_runs, varying_keys
from adpo_eval.tables import (ablation_rows, comparisons, comparisons_display, main_rows, paper_layout, runs_table,
                              summarize)

log = logging.getLogger(__name__)


# The tables' layout (adpo.registry's version of the stage, part of its identity): tables made in an older layout are
# redone, by this stage and by the pipeline, though neither the config nor the runs changed.
LAYOUT = registered("aggregate").version


class NoRunsError(DataError):
    """No finished eval run below the directories searched: there is nothing to make tables of."""


def run(cfg: DictConfig) -> dict[str, Any]:
    agg = cfg.aggregate
    out = Path(cfg.output_dir)
    roots = [Path(cfg.input_dir), *(Path(p) for p in agg.extra_inputs)]
    paper_path = resolve_path(agg.paper_tables) if agg.paper_tables else None
    eval_dirs = find_eval_dirs(roots)
    inputs = [str(d) for d in eval_dirs] + ([str(paper_path)] if paper_path and paper_path.is_file() else [])
    key = identity(cfg, "aggregate")
    if eval_dirs and is_complete(out, key, inputs):
        log.info("aggregate: %s is up to date with %d eval directories; skipping", out, len(eval_dirs))
        text = (out / "tables.md").read_text() if (out / "tables.md").is_file() else ""
        if agg.print_tables and text:
            print(text, flush=True)
        return {"tables": str(out / "tables.md")}

    runs, skipped = load_runs(eval_dirs)
    if not runs:
        raise NoRunsError(_no_runs_message(roots, skipped))
    group_by = varying_keys(runs) if agg.group_by == "auto" else list(agg.group_by or [])
    assign_groups(runs, group_by)
    paper, paper_note = paper_numbers(paper_path)
    notes = [paper_note] if paper_note else []

    mark_running(out, "aggregate", cfg, inputs, key=key)
    sections = _introduction(cfg, runs, roots, group_by)
    shown, written, tables = _write_results(out, runs, group_by, paper, agg)
    sections += shown
    outputs: dict[str, Any] = {"runs": len(runs), "group_by": group_by, "layout": LAYOUT, **written}
    if skipped:
        notes.append("Skipped: " + "; ".join(skipped))
    if notes:
        sections += ["", "Notes:", *(f"- {n}" for n in notes)]
    text = "\n".join(sections).rstrip() + "\n"
    atomic_write_text(out / "tables.md", text)
    outputs["tables"] = "tables.md"
    _log_to_wandb(cfg, tables, out / "granularity.png" if "plot" in written else None)
    write_manifest(out, "aggregate", cfg, inputs, outputs=outputs, key=key)
    if agg.print_tables:
        print(text, flush=True)
    return outputs


def _no_runs_message(roots: Sequence[Path], skipped: Sequence[str]) -> str:
    searched = ", ".join(f"{r} ({'exists' if r.is_dir() else 'does not exist'})" for r in roots)
    why = f" Found but not usable: {'; '.join(skipped)}." if skipped else ""
    return (f"aggregate: no finished eval runs (metrics.json + manifest.json of a completed eval stage) below "
            f"{searched}.{why} Run the eval stage first, or point input_dir / aggregate.extra_inputs at its output.")


def _introduction(cfg: DictConfig, runs: Sequence[EvalRun], roots: Sequence[Path],
                  group_by: Sequence[str]) -> list[str]:
    lines = [f"# Results ({cfg.get('experiment_name')})", "",
             f"{len(runs)} finished eval runs from {', '.join(str(r) for r in roots)}. Tables in the paper's layout: "
             "methods as rows, model / test set as columns."]
    if group_by:
        lines.append(f"Rows are also split by {', '.join(group_by)} (settings that differ between runs).")
    return lines


def _write_results(out: Path, runs: Sequence[EvalRun], group_by: Sequence[str], paper: pd.DataFrame,
                   agg: DictConfig) -> tuple[list[str], dict[str, str], dict[str, pd.DataFrame]]:
    """Every table and the plot into out: (the tables.md sections that show them, the files by output name, the
    tables shown, by name, for wandb)."""
    methods = Methods.of(r.info for r in runs)
    confidence = float(agg.confidence)
    summary = summarize(runs, methods, group_by, paper, confidence)
    sections: list[str] = []
    written: dict[str, str] = {}
    tables: dict[str, pd.DataFrame] = {}
    for name, title, cells, with_granularity in [
            ("main", "Main table", main_rows(summary, methods), False),
            ("granularity", "Granularity ablation", ablation_rows(summary, methods), True)]:
        if cells.empty:
            continue
        layout = paper_layout(cells, methods, group_by, with_granularity=with_granularity, confidence=confidence)
        write_table(out, name, layout.display, layout.numeric, f"{title}.", layout.note)
        sections += ["", f"## {title}", "", to_markdown(layout.display), layout.note]
        written[name] = f"{name}.md"
        tables[name] = layout.display
    comp = comparisons(runs, methods, confidence, int(agg.bootstrap_resamples), int(agg.bootstrap_seed))
    if not comp.empty:
        shown = comparisons_display(comp, confidence)
        write_table(out, "comparisons", shown, comp, "Paired bootstrap on the same test problems.")
        sections += ["", f"## Paired comparisons (A - B in points, {round(100 * confidence)}% paired-bootstrap CI "
                         "over problems and seeds, two-sided p; \"matched\": both methods ran the same seeds, on the "
                         "same sampled pairs, and seeds were resampled together)", "", to_markdown(shown)]
        written["comparisons"] = "comparisons.md"
        tables["comparisons"] = shown
    if agg.plot and plot_granularity(summary, methods, group_by, out / "granularity.png"):
        sections += ["", "Accuracy against granularity (the paper's beside ours where it has numbers): granularity.png"]
        written["plot"] = "granularity.png"
    ours = summary[summary["accuracy"].notna()]  # the paper-only rows are the tables' shape, not results
    ours = ours[[c for c in ours.columns if c not in ("paper_table", "paper_rank", "runs")] + ["runs"]]
    atomic_write_text(out / "summary.csv", ours.rename(columns={"diff": "ours - paper"}).to_csv(index=False))
    atomic_write_text(out / "runs.csv", runs_table(runs).to_csv(index=False))
    return sections, written, tables


def _log_to_wandb(cfg: DictConfig, tables: dict[str, pd.DataFrame], plot: Path | None) -> None:
    """One wandb run per aggregation: each table as a wandb.Table (the cells as shown), the plot as an image."""
    log_tables_and_images(cfg, "aggregate", tables, {"granularity": plot} if plot is not None else {})


main = stage_main("aggregate")(run)

if __name__ == "__main__":
    main()
