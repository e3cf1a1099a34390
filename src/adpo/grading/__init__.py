"""Answer extraction and equivalence for GSM8K and MATH, one at a time or many in parallel with a time bound.

    extract_answer(dataset, text) -> str | None      the final answer in a model output (None: no answer)
    is_correct(dataset, text, gold) -> bool           extraction + equivalence; no answer is wrong, never an error
    grade(dataset, text, gold) -> Grade               both at once
    grade_batch(dataset, texts, golds, workers=2, timeout_s=10.0) -> list[Grade]
                                                      in worker processes; a stuck item is killed, counted wrong
    Grader(workers, timeout_s)                        a reusable pool (context manager) with .grade_batch(...)
    answer_key(dataset, extracted) -> str             one spelling per answer, to group equal answers

dataset is "gsm8k" (numbers, compared exactly) or "math" (LaTeX, compared with math-verify, gold first).
"""

from __future__ import annotations

from adpo.grading.core import Grade, answer_key, grade, is_correct
from adpo.grading.extract import extract_answer, last_boxed_content
from adpo.grading.pool import Grader, grade_batch

__all__ = ["Grade", "Grader", "answer_key", "extract_answer", "grade", "grade_batch", "is_correct",
           "last_boxed_content"]
