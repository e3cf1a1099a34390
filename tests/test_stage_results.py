"""The pipeline's one line per finished stage (adpo.stage_results) and the verdict on the base model's samples."""

from __future__ import annotations

from adpo.stage_results import pairability, result_line


def stats(both: int, only_wrong: int, only_right: int) -> dict:
    return {"questions": both + only_wrong + only_right, "questions_with_both": both,
            "questions_only_wrong": only_wrong, "questions_only_correct": only_right, "pairs": both}


def test_pairability_says_usable_or_which_way_the_model_misses():
    usable, why = pairability(stats(8, 24, 0))
    assert usable and why == ("base model usable for pairs: 25% of 32 questions have right and wrong samples "
                              "(75% only wrong, 0% only right)")
    weak, why = pairability(stats(1, 30, 1))
    assert not weak and "too weak" in why and "3% of 32 questions" in why
    strong, why = pairability(stats(0, 2, 30))
    assert not strong and "too strong" in why
    assert pairability({"questions": 0}) == (False, "no questions were sampled")


def test_result_lines_from_manifest_outputs():
    assert result_line("pairs", {"num_pairs": 8, "stats_summary": stats(8, 24, 0)}).startswith(
        "8 pairs; base model usable for pairs: 25% of 32 questions")
    assert result_line("eval", {"accuracy": 0.125, "total": 24}) == "accuracy 12.5% on 24 problems"
    assert result_line("sample", {"samples": 512, "questions": 32, "sample_accuracy": 0.02734375}) == \
        "512 samples of 32 questions, 2.7% correct"
    assert result_line("train", {"steps": 4, "final_metrics": {"loss": 0.5, "eval/loss": 0.7}}) == \
        "4 steps, final loss 0.5000, held-out loss 0.7000"
    assert result_line("sft", {"greedy_accuracy": {"accuracy": 0.355, "problems": 400}}) == \
        "base model greedy accuracy 35.5% on 400 test problems"
    assert result_line("prepare", {"train": {"problems": 3}}) is None
    trajectory = {"runs_measured": 2, "points": 18, "report": "trajectory.md",
                  "final_accuracy": {"dpo-sequence": 0.02, "adpo-token": None},
                  "final_kl": {"dpo-sequence": 318.2, "adpo-token": None}}
    assert result_line("trajectory", trajectory) == (
        "2 runs, 18 points; at the end: dpo-sequence 2.0% at KL 318.20, adpo-token - at KL - (trajectory.md)")
