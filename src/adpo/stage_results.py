"""What a finished stage found, in one line for `adpo-pipeline` (read from the stage's manifest), and the verdict on
the base model: can its samples make preference pairs?"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# Below this share of questions with both a right and a wrong sample, pairs come from a few questions only: the base
# model is too weak (mostly wrong) or too strong (mostly right) for the data, or sampled too cold.
USABLE_FRACTION = 0.10


def pairability(stats: Mapping[str, Any]) -> tuple[bool, str]:
    """(usable, why) from the pairs stage's statistics."""
    questions = int(stats.get("questions") or 0)
    both = int(stats.get("questions_with_both") or 0)
    if not questions:
        return False, "no questions were sampled"
    share = both / questions
    only_wrong = int(stats.get("questions_only_wrong") or 0) / questions
    only_right = int(stats.get("questions_only_correct") or 0) / questions
    text = (f"{share:.0%} of {questions} questions have right and wrong samples ({only_wrong:.0%} only wrong, "
            f"{only_right:.0%} only right)")
    if share >= USABLE_FRACTION:
        return True, f"base model usable for pairs: {text}"
    hint = ("too weak for this data: train it longer, or sample more (sampling.n)" if only_wrong >= only_right else
            "too strong for this data: use harder problems or a higher sampling.temperature")
    return False, f"base model hardly usable for pairs: {text}; it looks {hint}"


def result_line(stage: str, outputs: Mapping[str, Any]) -> str | None:
    """The stage's key result, or None for stages that have none worth a line."""
    if stage == "sft" and outputs.get("greedy_accuracy"):
        acc = outputs["greedy_accuracy"]
        return f"base model greedy accuracy {acc['accuracy']:.1%} on {acc['problems']} test problems"
    if stage == "sample" and "sample_accuracy" in outputs:
        return (f"{outputs.get('samples')} samples of {outputs.get('questions')} questions, "
                f"{outputs['sample_accuracy']:.1%} correct")
    if stage == "pairs" and outputs.get("stats_summary"):
        stats = outputs["stats_summary"]
        return f"{outputs.get('num_pairs', stats.get('pairs'))} pairs; {pairability(stats)[1]}"
    if stage == "train" and outputs.get("final_metrics"):
        m = outputs["final_metrics"]
        held = f", held-out loss {m['eval/loss']:.4f}" if "eval/loss" in m else ""
        left_out = {reason: n for reason, n in (outputs.get("pairs_dropped") or {}).items() if n}
        left = (f"; {sum(left_out.values())} pairs left out ({', '.join(f'{n} {r}' for r, n in left_out.items())})"
                if left_out else "")
        return f"{outputs.get('steps')} steps, final loss {m.get('loss', float('nan')):.4f}{held}{left}"
    if stage == "eval" and "accuracy" in outputs:
        return f"accuracy {outputs['accuracy']:.1%} on {outputs.get('total')} problems"
    if stage == "analyze" and "excess_share_after_error" in outputs:
        shown = ", ".join(f"{group} {'-' if value is None else f'{value:+.2f}'}"
                          for group, value in outputs["excess_share_after_error"].items())
        return (f"{outputs.get('runs_analysed')} runs; share of rejected answers' negative reward at/after their "
                f"first error beyond the tokens' share there: {shown} ({outputs.get('report')})")
    if stage == "trajectory" and "final_accuracy" in outputs:
        kl = outputs.get("final_kl") or {}
        shown = ", ".join(f"{group} {_pct(acc)} at KL {_num(kl.get(group))}"
                          for group, acc in outputs["final_accuracy"].items())
        return (f"{outputs.get('runs_measured')} runs, {outputs.get('points')} points; at the end: {shown} "
                f"({outputs.get('report')})")
    return None


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"
