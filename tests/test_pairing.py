"""The cDPO pairing rule on hand-made samples, and the pairs stage on hand-written shards."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from adpo.io import DataError, atomic_write_jsonl
from adpo_data_prep.pairing import Sample, answer_key, build_pairs, most_frequent_wrong_group, pair_question

REPO = Path(__file__).resolve().parents[1]


def make(pid: str, answers: list[str | None], gold: str = "7", texts: list[str] | None = None,
         dataset: str = "gsm8k") -> list[Sample]:
    """One sample per answer; None = no extractable answer. Texts are unique unless given."""
    out = []
    for i, ans in enumerate(answers):
        text = texts[i] if texts else (f"reasoning {i} ... The answer is {ans}." if ans else f"rambling {i}")
        out.append(Sample(problem_id=pid, question=f"What is question {pid}?", gold=gold, sample_index=i, text=text,
                          extracted=ans, correct=ans == gold, prompt="Question: ...\nAnswer:", finish_reason="stop",
                          dataset=dataset))
    return out


def test_chosen_correct_rejected_from_most_frequent_wrong_group():
    samples = make("q1", ["7", "3", "5", "3", "7", "5", "3", None, "9"])
    pairs, stats = pair_question(samples, seed=0)
    assert len(pairs) == 1
    (pair,) = pairs
    assert pair.chosen.correct and pair.chosen.extracted == "7"
    assert not pair.rejected.correct and pair.rejected.extracted == "3"
    assert pair.rejected_group_size == 3
    assert stats.samples == 9 and stats.correct == 2 and stats.no_answer == 1
    assert stats.wrong_with_answer == 6 and stats.distinct_wrong_answers == 3


def test_most_frequent_group_folds_spellings_of_one_value():
    # "5" appears once but "5.0" and " 5 " are the same value: that group (3) beats "3" (2).
    samples = make("q1", ["7", "3", "5", "3", "5.0", " 5 "])
    (pair,), _ = pair_question(samples)
    assert answer_key(pair.rejected.extracted) == "5"
    assert answer_key("1,000") == answer_key("1000.") == "1000"
    assert answer_key("3,4") == "3,4"  # a tuple, not a thousands separator


def test_math_answers_grouped_by_the_graders_latex_normal_form():
    answers = ["\\frac{1}{2}", "\\sqrt{2}", "\\dfrac{1}{2}", "\\sqrt{3}", "\\sqrt{2}", "\\tfrac{1}{2}"]
    samples = make("m", answers, gold="\\sqrt{3}", dataset="math")
    (pair,), stats = pair_question(samples)
    # Three spellings of 1/2 outnumber the two of sqrt(2).
    assert answer_key(pair.rejected.extracted, "math") == answer_key("\\frac{1}{2}", "math")
    assert pair.rejected_group_size == 3 and stats.distinct_wrong_answers == 2


def test_tie_goes_to_group_sampled_first_whatever_the_seed():
    # "9" and "3" both twice; "9" is sampled first (index 1), so it wins for every seed.
    samples = make("q1", ["7", "9", "3", "3", "9"])
    key, group = most_frequent_wrong_group([s for s in samples if not s.correct])
    assert key == "9" and [s.sample_index for s in group] == [1, 4]
    for seed in range(10):
        (pair,), _ = pair_question(samples, seed=seed)
        assert pair.rejected.extracted == "9"
    # The same samples in another order: the tie is still broken by sample_index, not by position in the list.
    (pair,), _ = pair_question(list(reversed(samples)), seed=3)
    assert pair.rejected.extracted == "9"


def test_no_answer_responses_never_paired_and_do_not_count_as_wrong():
    samples = make("q1", ["7", None, None, None, "4"])
    (pair,), stats = pair_question(samples)
    assert pair.rejected.extracted == "4"
    assert stats.no_answer == 3 and stats.wrong_with_answer == 1
    # Only correct answers and garbage: no pair.
    pairs, stats = pair_question(make("q2", ["7", None, ""]))
    assert pairs == [] and stats.no_answer == 2


def test_duplicate_responses_removed_but_counted_in_frequency():
    texts = ["good 7", "good 7", "bad 3", "bad 3", "bad 3", "bad 5 a", "bad 5 b"]
    samples = make("q1", ["7", "7", "3", "3", "3", "5", "5"], texts=texts)
    pairs, stats = pair_question(samples, pairs_per_question=10)
    # "3" has three samples (one unique text) and beats "5" (two unique texts); one correct text x one rejected.
    assert len(pairs) == 1 and pairs[0].rejected.text == "bad 3" and pairs[0].rejected_group_size == 3
    assert pairs[0].chosen.sample_index == 0  # the first sampled of the duplicates is kept
    assert stats.duplicates == 3


def test_questions_with_only_correct_or_only_wrong_answers_give_no_pairs():
    samples = make("all_right", ["7", "7", "7"]) + make("all_wrong", ["1", "2", "2"]) + make("none", [None, None])
    samples += make("both", ["7", "2"])
    pairs, stats = build_pairs(samples)
    assert [p.chosen.problem_id for p in pairs] == ["both"]
    s = stats.summary()
    assert s["questions"] == 4 and s["questions_with_both"] == 1 and s["questions_only_correct"] == 1
    assert s["questions_only_wrong"] == 1 and s["questions_no_answer"] == 1 and s["pairs"] == 1
    assert s["samples"] == 10
    assert s["sample_accuracy"] == pytest.approx(4 / 10)
    assert s["no_answer_rate"] == pytest.approx(2 / 10)
    assert s["mean_wrong_answers_per_question"] == pytest.approx(4 / 4)


def test_pairs_per_question_gives_distinct_pairs_using_distinct_responses_first():
    samples = make("q1", ["7", "7", "7", "3", "3", "5"])
    pairs, _ = pair_question(samples, pairs_per_question=2, seed=1)
    assert len(pairs) == 2
    assert len({p.chosen.sample_index for p in pairs}) == 2 and len({p.rejected.sample_index for p in pairs}) == 2
    assert all(p.rejected.extracted == "3" for p in pairs)
    # Asking for more than exist: every (chosen, rejected) combination once (3 correct x 2 in the top group).
    pairs, stats = pair_question(samples, pairs_per_question=50, seed=1)
    combos = {(p.chosen.sample_index, p.rejected.sample_index) for p in pairs}
    assert len(pairs) == len(combos) == 6 and stats.pairs == 6
    assert [p.rank for p in pairs] == list(range(6))


def test_selection_depends_on_seed_but_not_on_other_questions():
    samples = make("q1", ["7"] * 8 + ["3"] * 8)
    picks = {(pair_question(samples, seed=s)[0][0].chosen.sample_index,
              pair_question(samples, seed=s)[0][0].rejected.sample_index) for s in range(20)}
    assert len(picks) > 1  # the seed does choose among the candidates
    alone, _ = build_pairs(samples, seed=5)
    with_others, _ = build_pairs(make("q0", ["7", "1"]) + samples + make("q2", ["7", "2"]), seed=5)
    assert [(p.chosen, p.rejected) for p in alone] == [(p.chosen, p.rejected) for p in with_others[1:2]]


def test_drop_truncated_option():
    samples = make("q1", ["7", "3", "3", "5"])
    samples = [s if s.sample_index != 1 and s.sample_index != 2 else
               Sample(**{**vars(s), "finish_reason": "length"}) for s in samples]
    (pair,), _ = pair_question(samples)
    assert pair.rejected.extracted == "3"
    (pair,), stats = pair_question(samples, drop_truncated=True)
    assert pair.rejected.extracted == "5" and stats.truncated_dropped == 2


def test_pairs_per_question_must_be_positive():
    with pytest.raises(ValueError, match="pairs_per_question"):
        pair_question(make("q1", ["7", "3"]), pairs_per_question=0)


# ---------------------------------------------------------------- the stage, on hand-written shards


def sample_row(s: Sample) -> dict:
    return {"problem_id": s.problem_id, "dataset": s.dataset, "question": s.question, "gold": s.gold,
            "prompt": s.prompt, "sample_index": s.sample_index, "text": s.text, "extracted": s.extracted,
            "correct": s.correct, "finish_reason": s.finish_reason}


def write_samples(samples_dir: Path) -> list[Sample]:
    shard0 = make("g1", ["7", "3", "3", "5", None]) + make("g2", ["2", "2", "2"], gold="2")
    shard1 = make("m1", ["\\frac{1}{2}", "1/3", "1/3", "0.5"], gold="\\frac{1}{2}", dataset="math")
    atomic_write_jsonl(samples_dir / "shard-00000.jsonl", map(sample_row, shard0))
    atomic_write_jsonl(samples_dir / "shard-00001.jsonl", map(sample_row, shard1))
    return shard0 + shard1


def run_pairs_cli(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "adpo_data_prep.pairs", f"paths.root={tmp_path}", "progress=false", "wandb=disabled",
           *overrides]
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)


def test_pairs_stage_cli_writes_training_prompts_stats_and_is_reproducible(tmp_path):
    write_samples(tmp_path / "samples")
    proc = run_pairs_cli(tmp_path, "pairing.seed=3")
    assert proc.returncode == 0, proc.stderr
    assert "questions_with_both" in proc.stdout and "sample_accuracy" in proc.stdout
    out = tmp_path / "pairs"
    first = (out / "pairs.jsonl").read_bytes()
    rows = [json.loads(line) for line in first.decode().splitlines()]
    assert [r["problem_id"] for r in rows] == ["g1", "m1"]
    g1, m1 = rows
    assert g1["prompt"] == "Question: What is question g1?\nAnswer:"
    assert m1["prompt"] == "Problem: What is question m1?\nSolution:"
    assert g1["chosen_answer"] == "7" and g1["rejected_answer"] == "3"
    assert m1["rejected_answer"] == "1/3"
    for r in rows:
        assert r["chosen"] and r["rejected"] and r["chosen"] != r["rejected"]
        assert r["provenance"]["pairing_seed"] == 3 and "sampling" in r["provenance"]
    stats = json.loads((out / "stats.json").read_text())
    assert stats["questions"] == 3 and stats["questions_with_both"] == 2 and stats["pairs"] == 2
    assert stats["no_answer_rate"] == pytest.approx(1 / 12)
    assert json.loads((out / "manifest.json").read_text())["status"] == "complete"

    # Finished work is skipped; a fresh run with the same seed writes the same bytes.
    again = run_pairs_cli(tmp_path, "pairing.seed=3")
    assert "nothing to do" in again.stdout + again.stderr
    (out / "manifest.json").unlink()
    assert run_pairs_cli(tmp_path, "pairing.seed=3").returncode == 0
    assert (out / "pairs.jsonl").read_bytes() == first


def test_pairs_stage_names_file_line_and_field_of_a_bad_row(tmp_path):
    from adpo.config import compose
    from adpo_data_prep.pairs import run

    samples_dir = tmp_path / "samples"
    write_samples(samples_dir)
    bad = samples_dir / "shard-00002.jsonl"
    bad.write_text(json.dumps({"problem_id": "x", "question": "q?", "gold": "1", "sample_index": 0, "text": "t",
                               "extracted": "1"}) + "\n")
    with pytest.raises(DataError, match=r"shard-00002.jsonl:1: missing field 'correct'"):
        run(compose("pairs", [f"paths.root={tmp_path}", "progress=false", "wandb=disabled"]))


def test_pairs_stage_refuses_unfinished_sampling(tmp_path):
    from adpo.config import compose
    from adpo.manifest import write_manifest
    from adpo_data_prep.pairs import run

    samples_dir = tmp_path / "samples"
    write_samples(samples_dir)
    write_manifest(samples_dir, "sample", {"seed": 0}, status="running")
    with pytest.raises(DataError, match="not 'complete'"):
        run(compose("pairs", [f"paths.root={tmp_path}", "progress=false", "wandb=disabled"]))


def test_pairs_stage_renders_chat_training_prompts(tmp_path, tiny_model_dir):
    from adpo.config import compose
    from adpo_data_prep.pairs import run

    write_samples(tmp_path / "samples")
    run(compose("pairs", [f"paths.root={tmp_path}", f"model.name_or_path={tiny_model_dir}", "model.prompt_format=chat",
                          "progress=false", "wandb=disabled"]))
    rows = [json.loads(line) for line in (tmp_path / "pairs" / "pairs.jsonl").read_text().splitlines()]
    assert rows and all(r["prompt"].startswith("<|user|>\n" + r["question"]) for r in rows)
    assert all(r["prompt"].endswith("<|assistant|>\n") for r in rows)


def test_samples_drawn_with_the_other_prompt_form_are_refused_naming_the_key(tmp_path):
    """Samples drawn after "Answer:" start with the space; pairing them with "Answer: " training prompts would train on
    a doubled space (and the reverse on none): the pairs stage says which setting matches the samples."""
    write_samples(tmp_path / "samples")
    proc = run_pairs_cli(tmp_path, "model.prompt_trailing_space=true")
    assert proc.returncode != 0 and not (tmp_path / "pairs" / "pairs.jsonl").exists()
    assert "model.prompt_trailing_space=false" in proc.stderr
    assert "samples were drawn with prompts ending in \"Answer:\"" in proc.stderr

    old = tmp_path / "old"
    for shard in sorted((tmp_path / "samples").glob("shard-*.jsonl")):
        rows = [json.loads(line) for line in shard.read_text().splitlines()]
        atomic_write_jsonl(old / "samples" / shard.name, ({**r, "prompt": r["prompt"] + " "} for r in rows))
    assert run_pairs_cli(old, "model.prompt_trailing_space=false").returncode != 0
    proc = run_pairs_cli(old, "model.prompt_trailing_space=true")
    assert proc.returncode == 0, proc.stderr
    prompts = [json.loads(line)["prompt"] for line in (old / "pairs" / "pairs.jsonl").read_text().splitlines()]
    assert prompts and all(p.endswith(("Answer: ", "Solution: ")) for p in prompts)


def test_pairs_stats_count_the_pairs_over_the_models_length_limits(tmp_path, tiny_model_dir):
    """stats.json says how many pairs train.length_policy=drop would leave out (truncate would cut), with the
    model's own tokenizer; a model whose tokenizer is not on the machine gets null, not a download."""
    from transformers import AutoTokenizer

    write_samples(tmp_path / "samples")
    proc = run_pairs_cli(tmp_path, f"model.name_or_path={tiny_model_dir}", "model.max_prompt_length=null",
                         "model.max_length=null")
    assert proc.returncode == 0, proc.stderr
    stats = json.loads((tmp_path / "pairs" / "stats.json").read_text())
    assert stats["pairs_over_length_limits"] == 0
    rows = [json.loads(line) for line in (tmp_path / "pairs" / "pairs.jsonl").read_text().splitlines()]
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    lengths = sorted(len(tok(r["prompt"])["input_ids"]) + max(len(tok(r[k], add_special_tokens=False)["input_ids"])
                                                            for k in ("chosen", "rejected")) for r in rows)
    assert lengths[0] < lengths[-1]

    over = tmp_path / "over"
    proc = run_pairs_cli(tmp_path, f"model.name_or_path={tiny_model_dir}", f"model.max_length={lengths[-1]}",
                         "model.max_prompt_length=null", f"paths.pairs={over}")
    assert proc.returncode == 0, proc.stderr
    assert "pairs_over_length_limits" in proc.stdout
    assert json.loads((over / "stats.json").read_text())["pairs_over_length_limits"] == lengths.count(lengths[-1])

    offline = tmp_path / "offline"
    proc = run_pairs_cli(tmp_path, "model.name_or_path=no-such-org/no-such-model", f"paths.pairs={offline}")
    assert proc.returncode == 0, proc.stderr
    assert json.loads((offline / "stats.json").read_text())["pairs_over_length_limits"] is None
