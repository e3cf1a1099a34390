"""The process analysis (adpo-analyze): per-token implicit rewards of a trained run, anchored at the first divergence
and at the rejected answer's first error, and the statistics of where the negative reward sits."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest

from adpo_eval.process_stats import PairRewards, aligned_mean, first_divergence, pair_statistics, summarize_runs
from adpo_eval.token_spans import token_at_char
from train_helpers import REPO_ROOT, run_train, stage_env, train_overrides, write_pairs

# ---------------------------------------------------------------------------------------------- statistics


def test_negative_reward_all_after_the_error_is_all_of_the_share():
    rejected = np.array([0.1, 0.0, 0.2, -0.5, -0.1, 0.3, -0.4, 0.0])  # error at token 3
    stats = pair_statistics(PairRewards("p", np.zeros(6), rejected, first_divergence=2, first_error=3))
    assert stats["neg_share_after_error"] == pytest.approx(1.0)
    assert stats["token_share_after_error"] == pytest.approx(5 / 8)
    assert stats["excess_share_after_error"] == pytest.approx(1 - 5 / 8)
    assert stats["reward_at_error"] == pytest.approx(-0.5)
    assert stats["mean_reward_before_error"] == pytest.approx(0.1)
    assert stats["mean_reward_after_error"] == pytest.approx(-0.14)
    assert stats["reward_drop_at_error"] == pytest.approx(-0.24)
    assert stats["margin"] == pytest.approx(0.0 - rejected.sum())
    assert stats["rejected_mean_reward_after_divergence"] == pytest.approx(rejected[2:].mean())


def test_an_even_spread_has_no_excess_and_no_error_leaves_the_error_statistics_undefined():
    even = pair_statistics(PairRewards("p", np.ones(4), -np.ones(10), first_divergence=0, first_error=4))
    assert even["excess_share_after_error"] == pytest.approx(0.0, abs=1e-12)
    assert even["neg_share_after_error"] == pytest.approx(0.6)
    none = pair_statistics(PairRewards("p", np.ones(4), -np.ones(10), first_divergence=0, first_error=None))
    assert math.isnan(none["excess_share_after_error"]) and math.isnan(none["reward_at_error"])
    assert none["margin"] == pytest.approx(14.0)
    # No negative reward at all: the share is undefined, the token share is not.
    positive = pair_statistics(PairRewards("p", np.ones(2), np.ones(5), first_divergence=0, first_error=1))
    assert math.isnan(positive["neg_share_after_error"]) and positive["token_share_after_error"] == 0.8


def test_the_share_from_the_divergence_on_separates_the_error_from_where_answers_differ():
    # Diverge at 2, err at 5: negative reward only between the divergence and the error is "where they differ".
    rejected = np.array([0.0, 0.0, -0.3, -0.3, -0.3, 0.0, 0.0, 0.0, 0.0, 0.0])
    before = pair_statistics(PairRewards("p", np.zeros(10), rejected, first_divergence=2, first_error=5))
    assert before["excess_share_after_error_from_divergence"] == pytest.approx(0.0 - 5 / 8)
    at_error = pair_statistics(PairRewards("p", np.zeros(10), rejected[::-1].copy(), first_divergence=2,
                                           first_error=5))
    assert at_error["excess_share_after_error_from_divergence"] == pytest.approx(3 / 3 - 5 / 8)
    same = pair_statistics(PairRewards("p", np.zeros(10), rejected, first_divergence=5, first_error=5))
    assert math.isnan(same["excess_share_after_error_from_divergence"])


def test_first_divergence():
    assert first_divergence([1, 2, 3, 4], [1, 2, 5, 4]) == 2
    assert first_divergence([1, 2], [1, 2, 3]) == 2
    assert first_divergence([7], [8]) == 0


def test_aligned_means_line_up_each_series_at_its_anchor():
    a, b = np.arange(10.0), 100 + np.arange(5.0)
    offsets, means, counts = aligned_mean([a, b, np.ones(3)], [4, 1, None], before=2, after=3)
    assert list(offsets) == [-2, -1, 0, 1, 2, 3]
    # a[2..7] and b[-1..4] (b has no index -1): the anchor column is (a[4] + b[1]) / 2.
    assert list(counts) == [1, 2, 2, 2, 2, 2]
    assert means[0] == 2.0 and means[2] == pytest.approx((4 + 101) / 2) and means[5] == pytest.approx((7 + 104) / 2)
    _, far, far_counts = aligned_mean([np.ones(2)], [0], before=0, after=4)
    assert list(far_counts) == [1, 1, 0, 0, 0] and math.isnan(far[-1])


def test_groups_average_their_runs_with_a_t_interval():
    stats = summarize_runs([{"margin": 1.0}, {"margin": 3.0}, {"margin": float("nan")}])
    assert stats["margin"].estimate == 2.0 and stats["margin"].n == 2 and stats["margin"].low < 2.0
    assert stats["reward_at_error"] is None


# ---------------------------------------------------------------------------------------------- tokens

@pytest.fixture(scope="module")
def toy_problems():
    from adpo_data_prep.toy.task import make_problems

    return make_problems(24, seed=3, split="train", min_steps=2, max_steps=3)


@pytest.fixture(scope="module")
def toy_model(tmp_path_factory, toy_problems):
    """A random tiny Llama with a tokenizer trained on the toy task's text (the quickstart's kind)."""
    from adpo_data_prep.toy.model import build_tiny_llama
    from adpo_data_prep.toy.task import make_problems
    from adpo_data_prep.toy.tokenizer import build_tokenizer

    out = tmp_path_factory.mktemp("toy_model")
    texts = [f"Question: {p.question}\nAnswer: {p.solution}" for p in make_problems(400, seed=0)]
    tokenizer = build_tokenizer(texts, out, vocab_size=320)
    build_tiny_llama(tokenizer, out, hidden_size=64, num_layers=2, num_heads=2, seed=0)
    return out


def test_token_at_char_is_the_token_whose_span_holds_the_character(toy_model, toy_problems):
    from adpo.models import load_tokenizer

    tokenizer = load_tokenizer(toy_model)
    for problem in toy_problems[:6]:
        text = " " + problem.solution
        encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids, spans = encoded["input_ids"], encoded["offset_mapping"]
        for char in range(len(text)):
            holder = next(i for i, (start, end) in enumerate(spans) if start <= char < end)
            assert token_at_char(tokenizer, ids, char) == holder, (text, char)
        assert token_at_char(tokenizer, ids, len(text)) is None


# ---------------------------------------------------------------------------------------------- the stage

def _corrupt(solution: str, rng) -> tuple[str, int]:
    """The solution with one step's result made wrong; (text, index of the wrong number in the text)."""
    lines = solution.split("\n")
    k = int(rng.integers(0, len(lines) - 1))  # a step line, not the final "#### N"
    line = lines[k]
    start = line.rindex("= ") + 2
    end = line.index(".", start)
    wrong = str(int(line[start:end]) + int(rng.integers(1, 4)))
    lines[k] = line[:start] + wrong + line[end:]
    # Later lines stay as they were: the first error is this one.
    char = sum(len(x) + 1 for x in lines[:k]) + start
    return "\n".join(lines), char


def _write_known_errors(path, problems, seed=0) -> dict[str, int]:
    """Pairs of (the exact solution, the solution with one wrong result); returns each pair's error character in
    its rejected response (which starts with the space the model writes after "Answer:")."""
    rng = np.random.default_rng(seed)
    rows, errors = [], {}
    for i, p in enumerate(problems):
        wrong, char = _corrupt(p.solution, rng)
        rows.append({"id": f"k{i}", "prompt": f"Question: {p.question}\nAnswer:", "chosen": " " + p.solution,
                     "rejected": " " + wrong, "problem_id": p.id, "question": p.question, "gold": p.gold})
        errors[f"k{i}"] = char + 1
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return errors


def _analyze(*overrides: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "-m", "adpo_eval.analyze", "progress=false", "wandb=disabled", *overrides],
                          cwd=REPO_ROOT, env=stage_env(), capture_output=True, text=True, timeout=600)
    if check:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def trained_on_known_errors(tmp_path_factory, toy_model, toy_problems):
    root = tmp_path_factory.mktemp("known_errors")
    pairs_dir = root / "pairs"
    errors = _write_known_errors(pairs_dir / "pairs.jsonl", toy_problems)
    run_dir = root / "train" / "adpo-token-s0"
    run_train(train_overrides(root, toy_model, pairs_dir, run_dir, "method=adpo", "method.granularity=token",
                              "train.max_steps=3", "train.lr=5e-3", "train.micro_batch_size=4",
                              "train.gradient_accumulation_steps=1", "train.heldout_pairs=6", "data=toy"))
    return root, run_dir, errors


@pytest.mark.slow
def test_analyze_finds_the_written_first_error_and_lines_rewards_up(trained_on_known_errors, toy_model, tmp_path):
    from adpo.models import load_tokenizer

    root, run_dir, errors = trained_on_known_errors
    out = tmp_path / "analysis"
    _analyze(f"input_dir={run_dir}", f"output_dir={out}", "analyze.max_pairs=null")
    [run_out] = list((out / "runs").iterdir())
    rows = [json.loads(line) for line in (run_out / "pairs.jsonl").read_text().splitlines()]
    assert {r["id"] for r in rows} == set(errors)
    tokenizer = load_tokenizer(toy_model)
    pairs = {json.loads(line)["id"]: json.loads(line) for line in (root / "pairs" / "pairs.jsonl").open()}
    for row in rows:
        rejected = pairs[row["id"]]["rejected"]
        spans = tokenizer(rejected, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        expected = next(i for i, (start, end) in enumerate(spans) if start <= errors[row["id"]] < end)
        found = row["rejected"]["first_error"]
        assert found is not None and found["kind"] == "toy", row["id"]
        assert found["token"] == expected, (row["id"], found, rejected)
        assert found["statement"] in rejected and found["expected"] in pairs[row["id"]]["chosen"]
        assert row["chosen"]["first_error"] is None  # the chosen answer is the exact solution
        # They diverge at the first differing character (within the wrong number: "12" for "13" shares its "1").
        chosen = pairs[row["id"]]["chosen"]
        differs = next(i for i, (a, b) in enumerate(zip(chosen, rejected)) if a != b)
        assert differs >= errors[row["id"]]
        diverge = next(i for i, (start, end) in enumerate(spans) if start <= differs < end)
        assert row["first_divergence"] == diverge >= expected
        chosen_r, rejected_r = np.array(row["chosen"]["rewards"]), np.array(row["rejected"]["rewards"])
        assert len(rejected_r) == len(row["rejected"]["tokens"]) == len(spans) + 1  # + EOS
        # Same tokens, same context: the same rewards, up to the stored precision.
        np.testing.assert_allclose(chosen_r[:diverge], rejected_r[:diverge], rtol=1e-5, atol=1e-7)
        assert np.abs(rejected_r).max() > 0  # the policy moved
        assert row["rejected"]["segments"] == pytest.approx(row["rejected"]["rewards"])  # token granularity
    # The held-out pairs' mean margin is the train stage's own eval/rewards/margins for the final policy.
    manifest = json.loads((run_dir / "manifest.json").read_text())
    held = [sum(r["chosen"]["rewards"]) - sum(r["rejected"]["rewards"]) for r in rows if r["heldout"]]
    assert len(held) == manifest["outputs"]["pairs_held_out"] >= 6
    assert np.mean(held) == pytest.approx(manifest["outputs"]["final_metrics"]["eval/rewards/margins"], rel=1e-3)

    summary = json.loads((run_out / "summary.json").read_text())
    assert summary["rejected_with_error"] == len(rows) and summary["chosen_with_error"] == 0
    assert summary["first_error"] == "toy" and summary["group"] == "adpo-token"
    share = summary["statistics"]["token_share_after_error"]
    assert share["low"] <= share["estimate"] <= share["high"]
    for name in ("runs.csv", "groups.csv", "aligned.csv", "process.md", "aligned.png", "share.png"):
        assert (out / name).is_file(), name
    assert "adpo-token" in (out / "process.md").read_text()

    # A second run of the same command is finished work; an unknown setting of its own section is not.
    manifest_time = (out / "manifest.json").stat().st_mtime_ns
    _analyze(f"input_dir={run_dir}", f"output_dir={out}", "analyze.max_pairs=null")
    assert (out / "manifest.json").stat().st_mtime_ns == manifest_time
    pairs_time = (run_out / "pairs.jsonl").stat().st_mtime_ns
    _analyze(f"input_dir={run_dir}", f"output_dir={out}", "analyze.max_pairs=null", "analyze.plot=false")
    assert (out / "manifest.json").stat().st_mtime_ns != manifest_time
    assert (run_out / "pairs.jsonl").stat().st_mtime_ns == pairs_time  # the run's rewards were reused
    # Another confidence level: the statistics are recomputed from the stored rewards, not the rewards.
    _analyze(f"input_dir={run_dir}", f"output_dir={out}", "analyze.max_pairs=null", "analyze.confidence=0.5")
    narrower = json.loads((run_out / "summary.json").read_text())["statistics"]["token_share_after_error"]
    assert (run_out / "pairs.jsonl").stat().st_mtime_ns == pairs_time
    assert share["low"] < narrower["low"] <= narrower["estimate"] == pytest.approx(share["estimate"])


@pytest.mark.slow
def test_analyze_a_directory_of_runs_groups_seeds(trained_on_known_errors, toy_model, tmp_path):
    root, run_dir, _ = trained_on_known_errors
    second = root / "train" / "adpo-token-s1"
    run_train(train_overrides(root, toy_model, root / "pairs", second, "method=adpo", "method.granularity=token",
                              "train.max_steps=2", "train.lr=5e-3", "train.micro_batch_size=4", "seed=1",
                              "train.gradient_accumulation_steps=1", "data=toy"))
    out = tmp_path / "analysis"
    _analyze(f"input_dir={root / 'train'}", f"output_dir={out}", "analyze.max_pairs=10")
    runs = {json.loads((d / "summary.json").read_text())["run"]: d for d in (out / "runs").iterdir()}
    assert set(runs) == {"adpo-token-s0", "adpo-token-s1"}
    assert all(len((d / "pairs.jsonl").read_text().splitlines()) == 10 for d in runs.values())
    import pandas as pd

    groups = pd.read_csv(out / "groups.csv")
    assert list(groups["group"]) == ["adpo-token"] and int(groups["runs"][0]) == 2
    per_run = pd.read_csv(out / "runs.csv")
    assert groups["margin"][0] == pytest.approx(per_run["margin"].mean())
    assert groups["margin_low"][0] < groups["margin"][0] < groups["margin_high"][0]


@pytest.mark.slow
def test_analyze_finds_the_first_false_equation_of_gsm8k_style_answers(tmp_path, tiny_model_dir):
    """A run on data other than the toy task: the first error is the first false `a op b = c` (here the rejected
    answer's "a + b = wrong")."""
    from adpo.models import load_tokenizer

    pairs_file = write_pairs(tmp_path / "pairs" / "pairs.jsonl", n=8, seed=4)
    run_dir = tmp_path / "train" / "dpo-sequence-s0"
    run_train(train_overrides(tmp_path, tiny_model_dir, pairs_file.parent, run_dir, "method=dpo",
                              "train.max_steps=2", "train.lr=1e-3", "train.micro_batch_size=4",
                              "train.gradient_accumulation_steps=1"))
    out = tmp_path / "analysis"
    _analyze(f"input_dir={run_dir}", f"output_dir={out}")
    tokenizer = load_tokenizer(tiny_model_dir)
    pairs = {json.loads(line)["id"]: json.loads(line) for line in pairs_file.open()}
    rows = [json.loads(line) for line in (out / "runs" / "dpo-sequence-s0" / "pairs.jsonl").open()]
    assert len(rows) == 8
    for row in rows:
        pair = pairs[row["id"]]
        wrong = pair["rejected"].split(" = ", 1)[1].split(".", 1)[0]
        char = pair["rejected"].index(" = ") + 3
        assert pair["rejected"][char:].startswith(wrong) and wrong != pair["gold"]
        spans = tokenizer(pair["rejected"], add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
        expected = next(i for i, (start, end) in enumerate(spans) if start <= char < end)
        found = row["rejected"]["first_error"]
        assert found["kind"] == "arithmetic" and found["token"] == expected, (pair["rejected"], found)
        assert found["expected"] == pair["gold"]
        assert row["chosen"]["first_error"] is None
        assert len(row["rejected"]["segments"]) == 1  # DPO: one segment, the whole answer
        assert row["rejected"]["segments"][0] == pytest.approx(sum(row["rejected"]["rewards"]), abs=1e-5)
    assert json.loads((out / "runs" / "dpo-sequence-s0" / "summary.json").read_text())["first_error"] == "arithmetic"
    # The toy locator on questions that are not the toy task's: refused, naming the pair's line and field.
    proc = _analyze(f"input_dir={run_dir}", f"output_dir={tmp_path / 'as_toy'}", "analyze.first_error=toy", check=False)
    assert proc.returncode == 1 and f"{pairs_file}:1: field 'question': analyze.first_error=toy" in proc.stderr


def test_analyze_without_runs_names_the_directory(tmp_path):
    proc = _analyze(f"input_dir={tmp_path / 'nothing'}", f"output_dir={tmp_path / 'out'}", check=False)
    assert proc.returncode == 1
    assert "no finished train run" in proc.stderr and str(tmp_path / "nothing") in proc.stderr
