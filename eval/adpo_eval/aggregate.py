"""Stage 'aggregate': finished eval directories -> the paper's tables (Markdown, CSV, LaTeX) and a granularity plot.

Each eval directory (metrics.json, predictions.jsonl, manifest.json) is one run; what it was (method, granularity,
model, dataset, seed) is read from the resolved config in its manifest, and how tables show its method from the
method config's display keys (label, family, order, main_granularity, paper_name). Runs that differ only in their
seed are averaged: mean with a Student-t 95% interval over seeds. Methods are compared on the same test problems with
a paired bootstrap (problems resampled, and seeds: together where both methods ran the same seeds). The paper's
numbers sit beside ours where model and dataset match.

Outputs in output_dir: main.{md,csv,tex} (method x model, one column pair per dataset), granularity.{md,csv,tex}
(the ablation, when a run has a granularity other than the main table's), comparisons.{md,csv,tex}, runs.csv (one row
per eval directory), summary.csv (tidy), granularity.png, tables.md (all of it, with notes) and manifest.json.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from adpo.config import stage_main
from adpo.io import atomic_write_text
from adpo.manifest import identity, is_complete, write_manifest
from adpo_eval.methods import Methods
from adpo_eval.paper import PaperNumbers, paper_numbers, resolve_path
from adpo_eval.plot import plot_granularity
from adpo_eval.render import to_markdown, write_table
from adpo_eval.runs import EvalRun, assign_groups, find_eval_dirs, load_runs, varying_keys
from adpo_eval.tables import (ablation_rows, comparisons, comparisons_display, main_rows, runs_table, summarize,
                              wide_table)

log = logging.getLogger(__name__)


def run(cfg: DictConfig) -> dict[str, Any]:
    agg = cfg.aggregate
    out = Path(cfg.output_dir)
    roots = [Path(cfg.input_dir), *(Path(p) for p in agg.extra_inputs)]
    paper_path = resolve_path(agg.paper_tables) if agg.paper_tables else None
    eval_dirs = find_eval_dirs(roots)
    inputs = [str(d) for d in eval_dirs] + ([str(paper_path)] if paper_path and paper_path.is_file() else [])
    key = identity(cfg, "aggregate")
    if is_complete(out, key, inputs):
        log.info("aggregate: %s is up to date with %d eval directories; skipping", out, len(eval_dirs))
        text = (out / "tables.md").read_text() if (out / "tables.md").is_file() else ""
        if agg.print_tables and text:
            print(text, flush=True)
        return {"tables": str(out / "tables.md")}

    runs, skipped = load_runs(eval_dirs)
    group_by = varying_keys(runs) if agg.group_by == "auto" else list(agg.group_by or [])
    assign_groups(runs, group_by)
    paper, paper_note = paper_numbers(paper_path)
    notes = [paper_note] if paper_note else []

    sections = _introduction(cfg, runs, roots, group_by)
    outputs: dict[str, Any] = {"runs": len(runs), "group_by": group_by}
    if runs:
        shown, written = _write_results(out, runs, group_by, paper, agg)
        sections += shown
        outputs.update(written)
    else:
        notes.append("No finished eval runs found.")
    if skipped:
        notes.append("Skipped: " + "; ".join(skipped))
    if notes:
        sections += ["", "Notes:", *(f"- {n}" for n in notes)]
    text = "\n".join(sections).rstrip() + "\n"
    atomic_write_text(out / "tables.md", text)
    outputs["tables"] = "tables.md"
    write_manifest(out, "aggregate", cfg, inputs, outputs=outputs, key=key)
    if agg.print_tables:
        print(text, flush=True)
    return outputs


def _introduction(cfg: DictConfig, runs: Sequence[EvalRun], roots: Sequence[Path],
                  group_by: Sequence[str]) -> list[str]:
    pct = round(100 * float(cfg.aggregate.confidence))
    lines = [f"# Results ({cfg.get('experiment_name')})", "",
             f"{len(runs)} finished eval runs from {', '.join(str(r) for r in roots)}. Accuracy in %: mean over "
             f"seeds ± half-width of the {pct}% Student-t interval (n = seeds; one seed: no interval)."]
    if group_by:
        lines.append(f"Rows are also split by {', '.join(group_by)} (settings that differ between runs).")
    return lines


def _write_results(out: Path, runs: Sequence[EvalRun], group_by: Sequence[str], paper: PaperNumbers,
                   agg: DictConfig) -> tuple[list[str], dict[str, str]]:
    """Every table and the plot into out: (the tables.md sections that show them, the files by output name)."""
    methods = Methods.of(r.info for r in runs)
    confidence = float(agg.confidence)
    summary = summarize(runs, methods, group_by, paper, confidence)
    sections: list[str] = []
    written: dict[str, str] = {}
    main = main_rows(summary, methods)
    if not main.empty:
        display, numeric = wide_table(main, methods, group_by, with_granularity=False, show_paper=bool(paper))
        write_table(out, "main", display, numeric, "Main table: accuracy (%) by method and model")
        sections += ["", "## Main table", "", to_markdown(display)]
        written["main"] = "main.md"
    ablation = ablation_rows(summary)
    if not ablation.empty:
        display, numeric = wide_table(ablation, methods, group_by, with_granularity=True, show_paper=bool(paper))
        write_table(out, "granularity", display, numeric, "Granularity ablation: accuracy (%)")
        sections += ["", "## Granularity ablation", "", to_markdown(display)]
        written["granularity"] = "granularity.md"
    comp = comparisons(runs, methods, confidence, int(agg.bootstrap_resamples), int(agg.bootstrap_seed))
    if not comp.empty:
        shown = comparisons_display(comp, confidence)
        write_table(out, "comparisons", shown, comp, "Paired bootstrap on the same test problems")
        sections += ["", f"## Paired comparisons (A - B in points, {round(100 * confidence)}% paired-bootstrap CI "
                         "over problems and seeds, two-sided p; \"matched\": both methods ran the same seeds, on the "
                         "same sampled pairs, and seeds were resampled together)", "", to_markdown(shown)]
        written["comparisons"] = "comparisons.md"
    if agg.plot and plot_granularity(summary, methods, group_by, out / "granularity.png"):
        sections += ["", "Accuracy against granularity: granularity.png"]
        written["plot"] = "granularity.png"
    atomic_write_text(out / "summary.csv", summary.to_csv(index=False))
    atomic_write_text(out / "runs.csv", runs_table(runs).to_csv(index=False))
    return sections, written


main = stage_main("aggregate")(run)

if __name__ == "__main__":
    main()
