"""The aggregate stage on hand-made eval directories: tables in the paper's layout, CIs over seeds, paper numbers,
paired comparisons, the granularity plot, skipping unfinished runs, and redoing the tables when a run is added."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from adpo.config import compose
from adpo.io import atomic_write_json, atomic_write_jsonl
from adpo.manifest import write_manifest
from adpo_eval import aggregate

PAPER = Path(__file__).resolve().parents[1].parent / "shared" / "docs" / "paper_tables.csv"
N = 200
DPO_DISPLAY = {"label": "DPO", "family": "adpo", "order": 10, "main_granularity": "sequence"}


def make_eval_dir(root: Path, method: str, granularity: str, seed: int, correct: np.ndarray, *,
                  model: str = "llama3_8b", paper_model: str | None = "Llama-3-8B", dataset: str = "gsm8k",
                  run_name: str | None = None, lr: float = 4e-5, status: str = "complete",
                  source: str = "local", method_keys: dict | None = None) -> Path:
    run_name = run_name or f"{method}-{granularity.replace(':', '')}-lr{lr}-s{seed}"
    out = root / "eval" / run_name
    rows = [{"id": f"p{i}", "prompt": "Question: ...", "output": "... #### 1", "extracted": "1", "gold": "1",
             "correct": bool(c)} for i, c in enumerate(correct)]
    atomic_write_jsonl(out / "predictions.jsonl", rows)
    atomic_write_json(out / "metrics.json", {"accuracy": float(np.mean(correct)), "total": len(rows)})
    cfg = {"run_name": run_name, "seed": seed, "experiment_name": "t",
           "method": {"name": method, "granularity": granularity, "beta": 0.1, "pairs_dir": str(root / "pairs"),
                      **(method_keys or {})},
           "train": {"lr": lr, "seed": seed},
           "model": {"name": model, "paper_name": paper_model},
           "data": {"dataset": dataset, "name": "toy" if source == "toy" else dataset, "source": source}}
    write_manifest(out, "eval", cfg, [], status=status)
    return out


def outcomes(rng: np.random.Generator, p: float, n: int = N) -> np.ndarray:
    return (rng.random(n) < p).astype(float)


def agg_cfg(root: Path, *overrides: str):
    return compose("aggregate", [f"paths.root={root}", "progress=false", "wandb=disabled",
                                 "aggregate.bootstrap_resamples=2000", "aggregate.print_tables=false", *overrides])


@pytest.fixture()
def study(tmp_path) -> Path:
    """Base model, DPO and ADPO (token, static:8) with 3 seeds each on the same 200 problems; ADPO is 10 points
    better than DPO on every seed (it solves 20 problems DPO fails)."""
    rng = np.random.default_rng(0)
    make_eval_dir(tmp_path, "adpo", "-", 0, outcomes(rng, 0.4), run_name="base")
    shared = outcomes(rng, 0.5)
    for seed in range(3):
        dpo = np.where(rng.random(N) < 0.1, 1 - shared, shared)  # seeds agree on ~90% of the problems
        adpo = dpo.copy()
        adpo[np.flatnonzero(dpo == 0)[:20]] = 1.0
        make_eval_dir(tmp_path, "dpo", "sequence", seed, dpo)
        make_eval_dir(tmp_path, "adpo", "token", seed, adpo)
        make_eval_dir(tmp_path, "adpo", "static:8", seed, outcomes(rng, 0.5))
    return tmp_path


@pytest.mark.skipif(not PAPER.is_file(), reason=f"paper tables not at {PAPER}")
def test_tables_in_the_paper_layout_with_paper_numbers(study):
    out = aggregate.run(agg_cfg(study))
    results = study / "results"
    assert {"main", "granularity", "comparisons", "tables", "plot"} <= set(out)
    main = pd.read_csv(results / "main.csv")
    assert list(main["Method"]) == ["Base", "DPO", "ADPO"]
    assert set(main["Model"]) == {"Llama-3-8B"}
    dpo = main[main["Method"] == "DPO"].iloc[0]
    assert dpo["GSM8K paper"] == pytest.approx(64.37)
    assert dpo["GSM8K seeds"] == 3

    runs = pd.read_csv(results / "runs.csv")
    dpo_accs = runs[runs["method"] == "dpo"]["accuracy"].to_numpy()
    half = 4.3027 * dpo_accs.std(ddof=1) / math.sqrt(3)
    assert dpo["GSM8K accuracy"] == pytest.approx(dpo_accs.mean())
    assert dpo["GSM8K ci_high"] - dpo["GSM8K ci_low"] == pytest.approx(2 * half, rel=1e-3)
    assert math.isnan(main[main["Method"] == "Base"].iloc[0]["GSM8K paper"])

    md = (results / "main.md").read_text()
    assert "| Model | Method | GSM8K | GSM8K (paper) |" in md and "64.37" in md and "(n=3)" in md
    tex = (results / "main.tex").read_text()
    assert r"\toprule" in tex and r"$\pm$" in tex

    ablation = pd.read_csv(results / "granularity.csv")
    static = ablation[ablation["Granularity"] == "static:8"].iloc[0]
    assert static["GSM8K paper"] == pytest.approx(64.97)

    comp = pd.read_csv(results / "comparisons.csv")
    row = comp[(comp["A"] == "ADPO") & (comp["B"] == "DPO")].iloc[0]
    assert row["A - B"] == pytest.approx(10.0)
    assert row["ci_low"] > 0 and row["p_value"] < 0.01
    assert row["seeds A"] == 3 and row["problems"] == N
    assert row["seeds matched"]  # same seeds 0-2 on both sides; the base model (one run) is not matched
    assert not comp[comp["B"] == "Base"]["seeds matched"].any()
    assert "3/3 matched" in (results / "comparisons.md").read_text()
    png = (results / "granularity.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


def test_missing_paper_file_gives_tables_without_it_and_a_note(study):
    aggregate.run(agg_cfg(study, "aggregate.paper_tables=/nonexistent/paper.csv"))
    text = (study / "results" / "tables.md").read_text()
    assert "/nonexistent/paper.csv not found" in text
    assert "(paper)" not in (study / "results" / "main.md").read_text()


def test_unfinished_runs_are_skipped_and_named(study):
    rng = np.random.default_rng(1)
    running = make_eval_dir(study, "cdpo", "sequence", 0, outcomes(rng, 0.5), status="running")
    aggregate.run(agg_cfg(study))
    text = (study / "results" / "tables.md").read_text()
    assert f"{running}: not finished" in text
    assert "cDPO" not in pd.read_csv(study / "results" / "main.csv")["Method"].tolist()


def test_learning_rate_sweep_splits_rows_automatically(tmp_path):
    rng = np.random.default_rng(2)
    for lr in (5e-6, 2e-5):
        for seed in range(2):
            make_eval_dir(tmp_path, "dpo", "sequence", seed, outcomes(rng, 0.5), lr=lr, model="tiny",
                          paper_model=None, source="toy")
    make_eval_dir(tmp_path, "dpo", "-", 0, outcomes(rng, 0.4), run_name="base", model="tiny", paper_model=None,
                  source="toy")
    out = aggregate.run(agg_cfg(tmp_path))
    assert out["group_by"] == ["train.lr"]
    main = pd.read_csv(tmp_path / "results" / "main.csv", dtype=str)
    assert list(zip(main["Method"], main["train.lr"])) == [("Base", "-"), ("DPO", "5e-06"), ("DPO", "2e-05")]
    assert "toy accuracy" in main.columns and not any("paper" in c for c in main.columns)
    comp = pd.read_csv(tmp_path / "results" / "comparisons.csv", dtype={"train.lr": str})
    # Within each learning rate: DPO against the base model.
    assert sorted(comp["train.lr"]) == ["2e-05", "5e-06"] and set(comp["B"]) == {"Base"}


def test_display_keys_come_from_the_manifest_then_the_method_config_then_the_name(tmp_path):
    rng = np.random.default_rng(4)
    for seed in range(3):  # runs from before the configs had display keys beside runs that record them
        make_eval_dir(tmp_path, "dpo", "sequence", seed, outcomes(rng, 0.5),
                      method_keys=DPO_DISPLAY if seed == 2 else None)
    make_eval_dir(tmp_path, "adpo", "token", 0, outcomes(rng, 0.5),
                  method_keys={"label": "ADPO*", "order": 1, "main_granularity": "token"})
    make_eval_dir(tmp_path, "unlisted", "sequence", 0, outcomes(rng, 0.5))
    make_eval_dir(tmp_path, "unlisted", "static:4", 0, outcomes(rng, 0.5))
    make_eval_dir(tmp_path, "adpo", "-", 0, outcomes(rng, 0.4), run_name="base")
    out = aggregate.run(agg_cfg(tmp_path))
    assert out["group_by"] == []  # display keys recorded by some runs only do not split rows
    main = pd.read_csv(tmp_path / "results" / "main.csv")
    assert list(main["Method"]) == ["Base", "ADPO*", "DPO"] and list(main["GSM8K seeds"]) == [1, 1, 3]
    ablation = pd.read_csv(tmp_path / "results" / "granularity.csv")
    # A method with neither recorded keys nor a config: its name, after the others, in no main-table row.
    assert list(zip(ablation["Method"], ablation["Granularity"]))[-2:] == [("unlisted", "static:4"),
                                                                          ("unlisted", "sequence")]
    comp = pd.read_csv(tmp_path / "results" / "comparisons.csv")
    assert {"unlisted (sequence)", "unlisted (static:4)", "ADPO*", "DPO", "Base"} == set(comp["A"]) | set(comp["B"])


def test_rerun_skips_until_a_new_run_finishes(study, capsys):
    cfg = agg_cfg(study, "aggregate.print_tables=true")
    aggregate.run(cfg)
    first = (study / "results" / "manifest.json").read_text()
    assert "## Main table" in capsys.readouterr().out
    aggregate.run(cfg)
    assert (study / "results" / "manifest.json").read_text() == first  # skipped
    make_eval_dir(study, "cadpo", "token", 0, outcomes(np.random.default_rng(3), 0.6))
    aggregate.run(cfg)
    assert "cADPO" in pd.read_csv(study / "results" / "main.csv")["Method"].tolist()


def test_command_line_entry_point(study):
    proc = subprocess.run([sys.executable, "-m", "adpo_eval.aggregate", f"paths.root={study}", "progress=false",
                           "wandb=disabled", "aggregate.bootstrap_resamples=500"],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "## Main table" in proc.stdout and "ADPO" in proc.stdout
    manifest = json.loads((study / "results" / "manifest.json").read_text())
    assert manifest["status"] == "complete" and len(manifest["inputs"]) >= 10
