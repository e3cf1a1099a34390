"""The aggregate stage on hand-made eval directories: tables in the paper's layout (methods as rows, model / test
set as columns, the paper's number and ours minus it under each row of ours), test sets named exactly (GSM8K,
MATH-500, MATH-5000, parts of them) and compared with the paper only where it measured the same set, n stated once,
the granularity ablation in the paper's shape, the plot with the paper's points, paired comparisons, skipping
unfinished runs, failing when there is nothing to aggregate, and the wandb run."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from adpo.config import compose, to_container
from adpo.io import atomic_write_json, atomic_write_jsonl
from adpo.manifest import write_manifest
from adpo_eval import aggregate
from adpo_eval.runs import dataset_label

PAPER = Path(__file__).resolve().parents[1].parent / "shared" / "docs" / "paper_tables.csv"
needs_paper = pytest.mark.skipif(not PAPER.is_file(), reason=f"paper tables not at {PAPER}")
DPO_DISPLAY = {"label": "DPO", "family": "adpo", "order": 10, "main_granularity": "sequence"}
# Data configs as the runs' manifests record them (conf/data/*.yaml).
GSM8K = {"dataset": "gsm8k", "name": "gsm8k", "source": "hub", "splits": {"train": "train", "test": "test"}}
MATH500 = {"dataset": "math", "name": "math500", "source": "hub",
           "splits": {"train": "train", "test": {"path": "HuggingFaceH4/MATH-500", "split": "test"}}}
MATH_FULL = {"dataset": "math", "name": "math", "source": "hub", "splits": {"train": "train", "test": "test"}}
TOY = {"dataset": "gsm8k", "name": "toy", "source": "toy"}
COLUMNS = ["Llama-3-8B / GSM8K", "Llama-3-8B / MATH-500", "Llama-3-8B / MATH-5000"]


def make_eval_dir(root: Path, method: str, granularity: str, seed: int, correct: np.ndarray, *,
                  model: str = "llama3_8b", paper_model: str | None = "Llama-3-8B", data: dict = GSM8K,
                  run_name: str | None = None, lr: float = 4e-5, status: str = "complete",
                  method_keys: dict | None = None) -> Path:
    run_name = run_name or f"{method}-{granularity.replace(':', '')}-lr{lr}-s{seed}"
    out = root / "eval" / data["name"] / run_name
    rows = [{"id": f"p{i}", "prompt": "Question: ...", "output": "... #### 1", "extracted": "1", "gold": "1",
             "correct": bool(c)} for i, c in enumerate(correct)]
    atomic_write_jsonl(out / "predictions.jsonl", rows)
    atomic_write_json(out / "metrics.json", {"accuracy": float(np.mean(correct)), "total": len(rows)})
    cfg = {"run_name": run_name, "seed": seed, "experiment_name": "t",
           "method": {"name": method, "granularity": granularity, "beta": 0.1, "pairs_dir": str(root / "pairs"),
                      **(method_keys or {})},
           "train": {"lr": lr, "seed": seed}, "eval": {"split": "test", "limit": None},
           "model": {"name": model, "paper_name": paper_model}, "data": data}
    write_manifest(out, "eval", cfg, [], status=status)
    return out


def outcomes(rng: np.random.Generator, p: float, n: int) -> np.ndarray:
    return (rng.random(n) < p).astype(float)


def exactly(k: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """n outcomes, exactly k correct: accuracies known to the digit."""
    out = np.zeros(n)
    out[rng.permutation(n)[:k]] = 1.0
    return out


def agg_cfg(root: Path, *overrides: str):
    return compose("aggregate", [f"paths.root={root}", "progress=false", "wandb=disabled",
                                 "aggregate.bootstrap_resamples=500", "aggregate.print_tables=false", *overrides])


# Seed k solves DPO_CORRECT[k] of the 1319 GSM8K problems: mean 870/1319 = 65.96%, the paper's DPO 64.37.
DPO_CORRECT = (860, 870, 880)


@pytest.fixture()
def study(tmp_path) -> Path:
    return make_study(tmp_path)


def make_study(tmp_path: Path) -> Path:
    """Llama-3-8B on the whole GSM8K (1319 problems): base model, DPO, ADPO token, static:8 and static:2 (3 seeds
    each; ADPO solves 40 problems more than DPO on every seed); on MATH-500: DPO (3 seeds) and ADPO (2 seeds); on
    the full MATH test set (5000 problems): the base model and DPO, one seed."""
    rng = np.random.default_rng(0)
    n = 1319
    make_eval_dir(tmp_path, "adpo", "-", 0, outcomes(rng, 0.55, n), run_name="base")
    for seed, k in enumerate(DPO_CORRECT):
        dpo = exactly(k, n, rng)
        adpo = dpo.copy()
        adpo[np.flatnonzero(dpo == 0)[:40]] = 1.0
        make_eval_dir(tmp_path, "dpo", "sequence", seed, dpo)
        make_eval_dir(tmp_path, "adpo", "token", seed, adpo)
        make_eval_dir(tmp_path, "adpo", "static:8", seed, exactly(850 + seed, n, rng))
        make_eval_dir(tmp_path, "adpo", "static:2", seed, outcomes(rng, 0.6, n))
        make_eval_dir(tmp_path, "dpo", "sequence", seed, exactly(100, 500, rng), data=MATH500)
        if seed < 2:
            make_eval_dir(tmp_path, "adpo", "token", seed, exactly(110, 500, rng), data=MATH500)
    make_eval_dir(tmp_path, "adpo", "-", 0, outcomes(rng, 0.15, 5000), run_name="base", data=MATH_FULL)
    make_eval_dir(tmp_path, "dpo", "sequence", 0, exactly(1000, 5000, rng), data=MATH_FULL)
    return tmp_path


def rows_of(frame: pd.DataFrame, *labels: str) -> list[tuple]:
    return list(frame[list(labels)].itertuples(index=False, name=None))


@needs_paper
def test_main_table_has_methods_as_rows_model_and_test_set_as_columns_and_ours_minus_the_paper(study):
    out = aggregate.run(agg_cfg(study))
    results = study / "results"
    assert {"main", "granularity", "comparisons", "tables", "plot"} <= set(out)
    main = pd.read_csv(results / "main.csv")
    assert list(main.columns) == ["Method", "Row", *COLUMNS]
    # Our methods, each followed by the paper's number and the difference; the paper's cDPO and cADPO rows keep its
    # shape though we ran neither (the paper's row alone); the base model is ours only.
    assert rows_of(main, "Method", "Row") == [
        ("Base", "ours (not in the paper)"),
        ("DPO", "ours"), ("DPO", "paper"), ("DPO", "ours − paper"),
        ("ADPO", "ours"), ("ADPO", "paper"), ("ADPO", "ours − paper"),
        ("cDPO", "paper"), ("cADPO", "paper")]
    table = main.set_index(["Method", "Row"])
    ours_dpo = 100 * np.mean(DPO_CORRECT) / 1319
    assert table.loc[("DPO", "ours"), COLUMNS[0]] == pytest.approx(ours_dpo)
    assert table.loc[("DPO", "paper"), COLUMNS[0]] == pytest.approx(64.37)
    assert table.loc[("DPO", "ours − paper"), COLUMNS[0]] == pytest.approx(ours_dpo - 64.37)
    # The paper's MATH is MATH-500: DPO 18.00 there; ours 100/500 = 20%.
    assert table.loc[("DPO", "paper"), COLUMNS[1]] == pytest.approx(18.0)
    assert table.loc[("DPO", "ours − paper"), COLUMNS[1]] == pytest.approx(2.0)
    assert table.loc[("ADPO", "ours − paper"), COLUMNS[1]] == pytest.approx(22.0 - 21.0)
    assert table.loc[("cDPO", "paper"), COLUMNS[0]] == pytest.approx(67.90)
    assert math.isnan(table.loc[("cDPO", "paper"), COLUMNS[2]])  # the paper has no MATH-5000 number

    md = (results / "main.md").read_text()
    assert "| Method | Row | Llama-3-8B / GSM8K | Llama-3-8B / MATH-500 | Llama-3-8B / MATH-5000 |" in md
    assert f"| DPO | ours − paper | {ours_dpo - 64.37:+.1f} | +2.0 | – |" in md
    assert "| DPO | paper | 64.37 | 18.00 | – |" in md

    ablation_md = (results / "granularity.md").read_text()
    assert "| ADPO | static:8 | paper | 64.97 |\n" in ablation_md  # GSM8K only: no ablation of ours on MATH


@needs_paper
def test_full_math_and_parts_of_test_sets_are_labelled_and_never_compared(study):
    rng = np.random.default_rng(5)
    # The first 100 GSM8K problems, and the first 500 of the full MATH test set (500 problems, but not MATH-500).
    make_eval_dir(study, "cadpo", "token", 0, exactly(60, 100, rng), data={**GSM8K, "name": "gsm8k100"})
    make_eval_dir(study, "cadpo", "token", 0, exactly(100, 500, rng), data={**MATH_FULL, "name": "math_first500"})
    aggregate.run(agg_cfg(study))
    results = study / "results"
    main = pd.read_csv(results / "main.csv")
    full, part_gsm, part_math = "Llama-3-8B / MATH-5000", "Llama-3-8B / GSM8K (first 100 of 1319)", \
        "Llama-3-8B / MATH-5000 (first 500 of 5000)"
    assert {full, part_gsm, part_math} <= set(main.columns)
    table = main.set_index(["Method", "Row"])
    assert table.loc[("DPO", "ours"), full] == pytest.approx(20.0)
    for column in (full, part_gsm, part_math):  # ours only: no paper number, no difference
        assert table.loc[(slice(None), ["paper", "ours − paper"]), column].isna().all(), column
    summary = pd.read_csv(results / "summary.csv")
    assert summary[summary["dataset"] != "GSM8K"].query("dataset != 'MATH-500'")["paper"].isna().all()
    assert set(summary["dataset"]) == {"GSM8K", "MATH-500", "MATH-5000", "GSM8K (first 100 of 1319)",
                                       "MATH-5000 (first 500 of 5000)"}
    assert summary.query("dataset == 'MATH-500' and method == 'dpo'")["paper"].tolist() == [18.0]
    assert summary.query("dataset == 'MATH-500' and method == 'dpo'")["ours - paper"].tolist() == [pytest.approx(2.0)]
    assert summary.query("dataset == 'MATH-5000'")["ours - paper"].isna().all()


def test_test_sets_are_named_from_the_data_config_and_the_number_of_problems():
    def label(data, problems, split="test"):
        return dataset_label({"data": data, "eval": {"split": split}}, problems)

    assert label(GSM8K, 1319) == "GSM8K"
    assert label(GSM8K, 16) == "GSM8K (first 16 of 1319)"
    assert label(MATH500, 500) == "MATH-500"
    local500 = {"dataset": "math", "name": "math500", "source": "local", "splits": {"test": "/d/math500/test.jsonl"}}
    assert label(local500, 500) == "MATH-500"
    assert label(MATH_FULL, 5000) == "MATH-5000"
    assert label(MATH_FULL, 500) == "MATH-5000 (first 500 of 5000)"  # data.limit=500 of the full set: not MATH-500
    assert label(GSM8K, 7473, split="train") == "GSM8K (train split, 7473 problems)"
    assert label(TOY, 1000) == "toy"
    assert label({**GSM8K, "paper_name": "GSM-Hard"}, 10) == "GSM-Hard"


@pytest.mark.parametrize("overrides, label", [
    (["data=gsm8k"], "GSM8K"), (["data=gsm8k_local"], "GSM8K"), (["data=math500"], "MATH-500"),
    (["data=math500_local"], "MATH-500"), (["data=math"], "MATH-5000"),
    (["data=math", "eval.limit=500"], "MATH-5000 (first 500 of 5000)"), (["data=gsm8k", "data.limit=64"],
                                                                        "GSM8K (first 64 of 1319)")])
def test_the_data_configs_name_their_test_sets(overrides, label):
    """As a run's manifest records them (the eval stage's resolved config), with as many problems as it evaluated."""
    cfg = to_container(compose("eval", overrides))
    problems = {"GSM8K": 1319, "MATH-500": 500, "MATH-5000": 5000}[label.split(" ")[0]]
    problems = min([problems, *(int(o.split("=")[1]) for o in overrides if "limit" in o)])
    assert dataset_label(cfg, problems) == label


@needs_paper
def test_n_is_stated_once_and_marked_only_where_a_cell_has_another(study):
    aggregate.run(agg_cfg(study))
    results = study / "results"
    tex = (results / "main.tex").read_text()
    md = (results / "main.md").read_text()
    # Every cell of ours is over 3 seeds but ADPO on MATH-500 (2): the one mark, and n = 3 said once, in the caption.
    for text in (tex, md):
        assert text.count("(n=2)") == 1 and "(n=3)" not in text and "(n=1)" not in text
        assert text.count("n = 3 seeds") == 1
    caption = next(line for line in tex.splitlines() if line.startswith(r"\caption{"))
    assert "n = 3 seeds" in caption and r"$\pm$" in caption
    assert r"\multicolumn{3}{c}{Llama-3-8B}" in tex and r"\cmidrule(lr){3-5}" in tex
    assert "GSM8K & MATH-500 & MATH-5000" in tex
    assert r"ours $-$ paper" in tex and r"\toprule" in tex
    # 3 seeds everywhere: no mark at all.
    assert "(n=" not in (results / "granularity.tex").read_text()


@needs_paper
def test_granularity_ablation_in_the_papers_shape_with_ours_extra_rows_after_it(study):
    aggregate.run(agg_cfg(study))
    ablation = pd.read_csv(study / "results" / "granularity.csv")
    # The paper lists static k=8 then k=4 (we ran k=8 and k=2, not k=4); ours-only granularities come after them.
    assert rows_of(ablation, "Method", "Granularity", "Row") == [
        ("ADPO", "static:8", "ours"), ("ADPO", "static:8", "paper"), ("ADPO", "static:8", "ours − paper"),
        ("ADPO", "static:4", "paper"),
        ("ADPO", "static:2", "ours (not in the paper)")]
    # Only the test sets on which we ran an ablation: GSM8K.
    assert list(ablation.columns) == ["Method", "Granularity", "Row", COLUMNS[0]]
    values = ablation.set_index(["Granularity", "Row"])[COLUMNS[0]]
    ours = 100 * 851 / 1319  # seeds solve 850, 851, 852
    assert values[("static:8", "ours")] == pytest.approx(ours)
    assert values[("static:8", "paper")] == pytest.approx(64.97)
    assert values[("static:8", "ours − paper")] == pytest.approx(ours - 64.97)
    assert values[("static:4", "paper")] == pytest.approx(66.26)
    shown = (study / "results" / "granularity.md").read_text()
    assert f"| ADPO | static:8 | ours − paper | {ours - 64.97:+.1f} |".replace("-0", "−0") in shown


@needs_paper
def test_plot_shows_the_papers_points_beside_ours(study, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figures = []
    close = plt.close
    monkeypatch.setattr(plt, "close", lambda fig=None: figures.append(fig) or close(fig))
    aggregate.run(agg_cfg(study))
    assert (study / "results" / "granularity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # A panel per test set with two granularities of a family (DPO is ADPO's sequence end): not MATH-5000 (DPO only).
    axes = {ax.get_title(): ax for ax in figures[0].axes}
    assert list(axes) == ["Llama-3-8B / GSM8K", "Llama-3-8B / MATH-500"]
    ax = axes["Llama-3-8B / GSM8K"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["token", "static:2", "static:4", "static:8", "sequence"]
    lines = {line.get_label(): line for line in ax.get_lines()}
    paper = lines["ADPO (paper)"]
    assert paper.get_marker() == "D" and paper.get_markerfacecolor() == "none"
    # token, static:4, static:8, sequence (DPO is the family's one-segment end): the paper's GSM8K numbers.
    assert list(paper.get_xdata()) == [0, 2, 3, 4]
    assert list(paper.get_ydata()) == pytest.approx([68.08, 66.26, 64.97, 64.37])
    ours = next(c.lines[0] for c in ax.containers if c.get_label() == "ADPO")  # errorbar: a container
    assert list(ours.get_xdata()) == [0, 1, 3, 4] and paper.get_color() == ours.get_color()
    assert "ADPO (paper)" in [t.get_text() for t in ax.get_legend().get_texts()]
    assert "cADPO (paper)" not in lines  # a family we did not run: the table shows the paper's numbers, not the plot


@needs_paper
def test_paired_comparisons_on_the_same_problems(study):
    aggregate.run(agg_cfg(study))
    comp = pd.read_csv(study / "results" / "comparisons.csv")
    row = comp[(comp["A"] == "ADPO") & (comp["B"] == "DPO") & (comp["dataset"] == "GSM8K")].iloc[0]
    assert row["A - B"] == pytest.approx(100 * 40 / 1319)
    assert row["ci_low"] > 0 and row["p_value"] < 0.01
    assert row["seeds A"] == 3 and row["problems"] == 1319 and row["seeds matched"]
    assert not comp[comp["B"] == "Base"]["seeds matched"].any()
    assert set(comp["dataset"]) == {"GSM8K", "MATH-500", "MATH-5000"}
    runs = pd.read_csv(study / "results" / "runs.csv")
    dpo = runs.query("method == 'dpo' and dataset == 'GSM8K'")["accuracy"].to_numpy()
    summary = pd.read_csv(study / "results" / "summary.csv").query("method == 'dpo' and dataset == 'GSM8K'").iloc[0]
    half = 4.3027 * dpo.std(ddof=1) / math.sqrt(3)
    assert summary["ci_high"] - summary["ci_low"] == pytest.approx(2 * half, rel=1e-3)


def test_missing_paper_file_gives_tables_without_it_and_a_note(study):
    aggregate.run(agg_cfg(study, "aggregate.paper_tables=/nonexistent/paper.csv"))
    text = (study / "results" / "tables.md").read_text()
    assert "/nonexistent/paper.csv not found" in text
    main = pd.read_csv(study / "results" / "main.csv")
    assert list(main.columns) == ["Method", *COLUMNS]  # no Row column: ours only
    assert list(main["Method"]) == ["Base", "DPO", "ADPO"]
    assert "paper" not in (study / "results" / "main.md").read_text()


def test_unfinished_runs_are_skipped_and_named(study):
    rng = np.random.default_rng(1)
    running = make_eval_dir(study, "cdpo", "sequence", 0, outcomes(rng, 0.5, 1319), status="running")
    aggregate.run(agg_cfg(study, "aggregate.paper_tables=null"))
    text = (study / "results" / "tables.md").read_text()
    assert f"{running}: not finished" in text
    assert "cDPO" not in pd.read_csv(study / "results" / "main.csv")["Method"].tolist()


def test_no_finished_runs_is_an_error_naming_the_directory_searched(tmp_path):
    empty = tmp_path / "nothing"
    proc = subprocess.run([sys.executable, "-m", "adpo_eval.aggregate", f"paths.root={empty}", "progress=false",
                           "wandb=disabled"], check=False, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "no finished eval runs" in proc.stderr and f"{empty}/eval (does not exist)" in proc.stderr
    assert not (empty / "results" / "main.md").exists()
    # Unfinished runs only: still an error, and it says what was found.
    running = make_eval_dir(tmp_path, "dpo", "sequence", 0, np.ones(10), status="running")
    with pytest.raises(aggregate.NoRunsError, match=f"{tmp_path}/eval \\(exists\\).*{running}: not finished"):
        aggregate.run(agg_cfg(tmp_path))


def test_learning_rate_sweep_splits_rows_automatically(tmp_path):
    rng = np.random.default_rng(2)
    for lr in (5e-6, 2e-5):
        for seed in range(2):
            make_eval_dir(tmp_path, "dpo", "sequence", seed, outcomes(rng, 0.5, 200), lr=lr, model="tiny",
                          paper_model=None, data=TOY)
    make_eval_dir(tmp_path, "dpo", "-", 0, outcomes(rng, 0.4, 200), run_name="base", model="tiny", paper_model=None,
                  data=TOY)
    out = aggregate.run(agg_cfg(tmp_path))
    assert out["group_by"] == ["train.lr"]
    main = pd.read_csv(tmp_path / "results" / "main.csv", dtype=str)
    assert list(main.columns) == ["train.lr", "Method", "tiny / toy"]  # the paper has no toy numbers: no Row column
    assert list(zip(main["Method"], main["train.lr"])) == [("Base", "-"), ("DPO", "5e-06"), ("DPO", "2e-05")]
    comp = pd.read_csv(tmp_path / "results" / "comparisons.csv", dtype={"train.lr": str})
    # Within each learning rate: DPO against the base model.
    assert sorted(comp["train.lr"]) == ["2e-05", "5e-06"] and set(comp["B"]) == {"Base"}


@needs_paper
def test_a_sweep_on_the_papers_models_repeats_the_papers_rows_in_each_group(tmp_path):
    rng = np.random.default_rng(6)
    make_eval_dir(tmp_path, "cdpo", "sequence", 0, exactly(1000, 1319, rng), model="gemma3_12b",
                  paper_model="Gemma-3-12B", lr=1e-5)
    for lr in (4e-5, 1e-5):
        make_eval_dir(tmp_path, "dpo", "sequence", 0, exactly(850, 1319, rng), lr=lr)
    out = aggregate.run(agg_cfg(tmp_path))
    assert out["group_by"] == ["train.lr"]
    main = pd.read_csv(tmp_path / "results" / "main.csv", dtype={"train.lr": str})
    # Models in the paper's order whatever order the runs came in; rows by learning rate, then the paper's methods.
    assert list(main.columns) == ["train.lr", "Method", "Row", "Llama-3-8B / GSM8K", "Gemma-3-12B / GSM8K"]
    in_group = [("DPO", "ours"), ("DPO", "paper"), ("DPO", "ours − paper"), ("ADPO", "paper"),
                ("cDPO", "ours"), ("cDPO", "paper"), ("cDPO", "ours − paper"), ("cADPO", "paper")]
    assert rows_of(main, "train.lr", "Method", "Row") == [("1e-05", *r) for r in in_group] + [
        ("4e-05", *r) for r in in_group if r[0] != "cDPO" or r[1] == "paper"]
    table = main.set_index(["train.lr", "Method", "Row"])
    assert table.loc[("1e-05", "cDPO", "ours − paper"), "Gemma-3-12B / GSM8K"] == pytest.approx(
        100 * 1000 / 1319 - 77.18)
    assert table.loc[("4e-05", "DPO", "ours − paper"), "Llama-3-8B / GSM8K"] == pytest.approx(
        100 * 850 / 1319 - 64.37)


def test_display_keys_come_from_the_manifest_then_the_method_config_then_the_name(tmp_path):
    rng = np.random.default_rng(4)
    for seed in range(3):  # runs from before the configs had display keys beside runs that record them
        make_eval_dir(tmp_path, "dpo", "sequence", seed, outcomes(rng, 0.5, 200),
                      method_keys=DPO_DISPLAY if seed == 2 else None)
    make_eval_dir(tmp_path, "adpo", "token", 0, outcomes(rng, 0.5, 200),
                  method_keys={"label": "ADPO*", "order": 1, "main_granularity": "token"})
    make_eval_dir(tmp_path, "unlisted", "sequence", 0, outcomes(rng, 0.5, 200))
    make_eval_dir(tmp_path, "unlisted", "static:4", 0, outcomes(rng, 0.5, 200))
    make_eval_dir(tmp_path, "adpo", "-", 0, outcomes(rng, 0.4, 200), run_name="base")
    out = aggregate.run(agg_cfg(tmp_path, "aggregate.paper_tables=null"))
    assert out["group_by"] == []  # display keys recorded by some runs only do not split rows
    main = pd.read_csv(tmp_path / "results" / "main.csv")
    # 200 GSM8K problems are a part of the test set: labelled so, and never beside the paper's numbers.
    assert list(main.columns) == ["Method", "Llama-3-8B / GSM8K (first 200 of 1319)"]
    assert list(main["Method"]) == ["Base", "ADPO*", "DPO"]
    ablation = pd.read_csv(tmp_path / "results" / "granularity.csv")
    # A method with neither recorded keys nor a config: its name, after the others, in no main-table row.
    assert rows_of(ablation, "Method", "Granularity") == [("unlisted", "static:4"), ("unlisted", "sequence")]
    comp = pd.read_csv(tmp_path / "results" / "comparisons.csv")
    assert {"unlisted (sequence)", "unlisted (static:4)", "ADPO*", "DPO", "Base"} == set(comp["A"]) | set(comp["B"])


@needs_paper
def test_wandb_run_holds_the_tables_and_the_plot(study, monkeypatch):
    from test_wandb import read_runs

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    aggregate.run(agg_cfg(study, "wandb=offline", "experiment_name=agg"))
    [(name, run)] = read_runs(study / "wandb").items()
    assert name == "aggregate-agg" and run["job_type"] == "aggregate" and run["group"] == "agg"
    [logged] = run["history"]  # wandb writes a media value as one history item per field: "<key>/path", ...
    assert {"tables/main/_type", "tables/granularity/_type", "tables/comparisons/_type"} <= set(logged)
    assert logged["tables/main/_type"] == "table-file" and logged["plots/granularity/_type"] == "image-file"
    [run_dir] = (study / "wandb" / "wandb").glob("offline-run-*")
    for name in ("main", "granularity", "comparisons"):
        shown = json.loads((run_dir / "files" / logged[f"tables/{name}/path"]).read_text())
        header, _, *rows = (study / "results" / f"{name}.md").read_text().strip().split("\n\n")[0].splitlines()
        assert shown["columns"] == header.strip("| ").split(" | ") and len(shown["data"]) == len(rows), name
    main = json.loads((run_dir / "files" / logged["tables/main/path"]).read_text())["data"]
    assert [row[:2] for row in main[:3]] == [["Base", "ours (not in the paper)"], ["DPO", "ours"], ["DPO", "paper"]]
    assert main[2][2:5] == ["64.37", "18.00", "–"]  # the cells as the tables show them
    image = run_dir / "files" / logged["plots/granularity/path"]
    assert image.read_bytes() == (study / "results" / "granularity.png").read_bytes()


def test_rerun_skips_until_a_new_run_finishes(study, capsys, monkeypatch):
    cfg = agg_cfg(study, "aggregate.print_tables=true", "aggregate.paper_tables=null")
    aggregate.run(cfg)
    first = (study / "results" / "manifest.json").read_text()
    assert "## Main table" in capsys.readouterr().out
    aggregate.run(cfg)
    assert (study / "results" / "manifest.json").read_text() == first  # skipped
    # Tables made by another version of this stage (adpo.registry: its table layout) are redone, though the config
    # and the runs are the same; the pipeline's check (the same identity) says the stage is unfinished too.
    import dataclasses

    import adpo.registry as registry
    from adpo.manifest import identity, is_complete

    inputs = list(json.loads(first)["inputs"])
    assert is_complete(study / "results", identity(cfg, "aggregate"), inputs)
    newer = tuple(dataclasses.replace(s, version="paper-layout-next") if s.name == "aggregate" else s
                  for s in registry.STAGES)
    monkeypatch.setattr(registry, "STAGES", newer)
    assert not is_complete(study / "results", identity(cfg, "aggregate"), inputs)
    (study / "results" / "main.md").write_text("old layout")
    aggregate.run(cfg)
    assert (study / "results" / "main.md").read_text().startswith("| Method |")
    make_eval_dir(study, "cadpo", "token", 0, outcomes(np.random.default_rng(3), 0.6, 1319))
    aggregate.run(cfg)
    assert "cADPO" in pd.read_csv(study / "results" / "main.csv")["Method"].tolist()


def test_command_line_entry_point(study):
    proc = subprocess.run([sys.executable, "-m", "adpo_eval.aggregate", f"paths.root={study}", "progress=false",
                           "wandb=disabled", "aggregate.bootstrap_resamples=200"],
                          check=False, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "## Main table" in proc.stdout and "ADPO" in proc.stdout
    manifest = json.loads((study / "results" / "manifest.json").read_text())
    assert manifest["status"] == "complete" and len(manifest["inputs"]) >= 10
