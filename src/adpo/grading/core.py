"""One output at a time: extract, compare, and the Grade record the batch API returns."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from adpo.grading.equivalence import gsm8k_equal, math_equal, normalize_latex
from adpo.grading.extract import extract_answer

DATASETS = ("gsm8k", "math")


@dataclass(frozen=True)
class Grade:
    extracted: str | None  # the final answer found in the output (None: no answer)
    correct: bool
    error: str | None = None  # "timeout" or "worker died: ..." when the item could not be graded normally

    def to_dict(self) -> dict:
        return asdict(self)


def _check(dataset: str) -> None:
    if dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {DATASETS}, got {dataset!r}")


def grade(dataset: str, text: str, gold: str, timeout_s: int | None = 5) -> Grade:
    """Extract the answer from `text` and compare it with `gold` (math-verify bounded by `timeout_s` seconds when
    called from a main thread)."""
    _check(dataset)
    extracted = extract_answer(dataset, text)
    if extracted is None:
        return Grade(None, False)
    if dataset == "gsm8k":
        return Grade(extracted, gsm8k_equal(extracted, gold))
    return Grade(extracted, math_equal(extracted, gold, timeout_s))


def is_correct(dataset: str, text: str, gold: str) -> bool:
    """Whether the final answer in `text` equals `gold`; an output without an answer is wrong."""
    return grade(dataset, text, gold).correct


def answer_key(dataset: str, extracted: str | None) -> str | None:
    """A normal form of an extracted answer, so that "18" and "18.0" (or "\\dfrac12" and "\\frac12") group together.

    GSM8K answers are already canonical numbers. MATH answers get a light string normalisation; answers that only
    math-verify would call equal (e.g. "0.5" and "\\frac{1}{2}") stay apart.
    """
    _check(dataset)
    if extracted is None:
        return None
    return extracted if dataset == "gsm8k" else normalize_latex(extracted)
