"""The cDPO pairing rule, as a pure function of graded samples (method.md, "Preference pairs").

Per question: responses with no extractable answer are skipped and duplicate responses removed; the remaining
wrong responses are grouped by their (canonical) extracted answer. Chosen = a correct response, rejected = a
response of the most frequent wrong-answer group. A question yields pairs only if it has both kinds.

Choices the protocol leaves open, and ours:
- "Most frequent" counts every graded sample of a group (duplicates included: they are the model's probability
  mass); ties go to the group sampled first (lowest sample_index), then to the smaller answer string.
- Which responses are picked is random but fixed by (seed, problem_id): a question's pairs do not change when
  other questions are added, removed or reordered.
- With pairs_per_question = k > 1, pairs are distinct (chosen, rejected) combinations taken so that the first
  ones use distinct responses on both sides; a question gives min(k, #correct x #top-group) pairs.
"""

from __future__ import annotations

import random
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from adpo.io import DataError, iter_jsonl, require_field


@dataclass(frozen=True)
class Sample:
    """One graded completion, as the sample stage writes it (ARCHITECTURE.md, "Samples")."""

    problem_id: str
    question: str
    gold: str
    sample_index: int
    text: str
    extracted: str | None
    correct: bool
    prompt: str = ""
    finish_reason: str | None = None
    dataset: str | None = None

    @property
    def has_answer(self) -> bool:
        return self.extracted is not None and self.extracted.strip() != ""

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any], where: str) -> Sample:
        extracted = obj.get("extracted")
        if extracted is not None and not isinstance(extracted, str):
            extracted = str(extracted)
        return cls(
            problem_id=str(require_field(obj, "problem_id", (str, int), where)),
            question=require_field(obj, "question", str, where, non_empty=True),
            gold=str(require_field(obj, "gold", (str, int, float), where)),
            sample_index=require_field(obj, "sample_index", int, where),
            text=require_field(obj, "text", str, where),
            extracted=extracted,
            correct=require_field(obj, "correct", bool, where),
            prompt=obj.get("prompt") or "",
            finish_reason=obj.get("finish_reason"),
            dataset=obj.get("dataset"),
        )


@dataclass(frozen=True)
class PairChoice:
    """A chosen and a rejected sample of one question; `rank` numbers the question's pairs from 0."""

    chosen: Sample
    rejected: Sample
    rank: int
    rejected_group_size: int  # graded samples giving the rejected answer (its "frequency")


@dataclass
class QuestionStats:
    samples: int = 0
    correct: int = 0
    no_answer: int = 0
    truncated_dropped: int = 0
    wrong_with_answer: int = 0
    distinct_wrong_answers: int = 0
    duplicates: int = 0
    pairs: int = 0


@dataclass
class PairingStats:
    questions: int = 0
    questions_with_both: int = 0
    questions_only_correct: int = 0
    questions_only_wrong: int = 0
    questions_no_answer: int = 0
    pairs: int = 0
    samples: int = 0
    correct: int = 0
    no_answer: int = 0
    truncated_dropped: int = 0
    duplicates: int = 0
    wrong_with_answer: int = 0
    distinct_wrong_answers: int = 0
    per_question: dict[str, QuestionStats] = field(default_factory=dict, repr=False)

    def add(self, problem_id: str, q: QuestionStats) -> None:
        self.per_question[problem_id] = q
        self.questions += 1
        for name in ("samples", "correct", "no_answer", "truncated_dropped", "duplicates", "wrong_with_answer",
                     "distinct_wrong_answers", "pairs"):
            setattr(self, name, getattr(self, name) + getattr(q, name))
        has_correct, has_wrong = q.correct > 0, q.wrong_with_answer > 0
        if has_correct and has_wrong:
            self.questions_with_both += 1
        elif has_correct:
            self.questions_only_correct += 1
        elif has_wrong:
            self.questions_only_wrong += 1
        else:
            self.questions_no_answer += 1

    def summary(self) -> dict[str, float | int]:
        """The numbers that tell whether the sampling temperature was right (method.md aims at ~10 wrong/question)."""
        q = max(self.questions, 1)
        s = max(self.samples, 1)
        return {
            "questions": self.questions,
            "questions_with_both": self.questions_with_both,
            "questions_only_correct": self.questions_only_correct,
            "questions_only_wrong": self.questions_only_wrong,
            "questions_no_answer": self.questions_no_answer,
            "pairs": self.pairs,
            "samples": self.samples,
            "sample_accuracy": self.correct / s,
            "mean_wrong_answers_per_question": self.wrong_with_answer / q,
            "mean_distinct_wrong_answers_per_question": self.distinct_wrong_answers / q,
            "no_answer_rate": self.no_answer / s,
            "duplicate_rate": self.duplicates / s,
            "truncated_dropped": self.truncated_dropped,
        }


# A plain or thousands-separated decimal: "18", "-3.5", "1,000", ".5", "2e3".
_NUMBER = re.compile(r"[+-]?(\d{1,3}(,\d{3})+|\d+)(\.\d*)?([eE][+-]?\d+)?|[+-]?\.\d+([eE][+-]?\d+)?")


def answer_key(extracted: str, dataset: str | None = None) -> str:
    """Group key for an extracted answer: the grader's normal form for the dataset (adpo.grading.answer_key: LaTeX
    spellings for MATH), then whitespace, '$', a trailing period, thousands separators and numeric spelling folded
    ("1,000" == "1000" == "1000.0"), so that one wrong value is one group."""
    if dataset in ("gsm8k", "math"):
        from adpo.grading import answer_key as grader_key

        extracted = grader_key(dataset, extracted) or ""
    key = " ".join(extracted.strip().strip("$").split())
    number = key.rstrip(".")
    if _NUMBER.fullmatch(number):
        value = float(number.replace(",", ""))
        return str(int(value)) if value.is_integer() and abs(value) < 1e15 else repr(value)
    return key


def sample_key(s: Sample) -> str:
    return answer_key(s.extracted or "", s.dataset)


def _response_key(text: str) -> str:
    return text.strip()


def _dedupe(samples: Iterable[Sample]) -> tuple[list[Sample], int]:
    """Unique responses by text (the first sampled kept), in sample_index order, and how many were dropped."""
    seen: dict[str, Sample] = {}
    dropped = 0
    for s in sorted(samples, key=lambda s: s.sample_index):
        key = _response_key(s.text)
        if key in seen:
            dropped += 1
        else:
            seen[key] = s
    return list(seen.values()), dropped


def most_frequent_wrong_group(wrong: Sequence[Sample]) -> tuple[str, list[Sample]] | None:
    """The wrong-answer group with the most samples; ties to the earliest sampled group, then the smaller key."""
    groups: dict[str, list[Sample]] = {}
    for s in sorted(wrong, key=lambda s: s.sample_index):
        groups.setdefault(sample_key(s), []).append(s)
    if not groups:
        return None
    key = min(groups, key=lambda k: (-len(groups[k]), groups[k][0].sample_index, k))
    return key, groups[key]


def _combinations(n_chosen: int, n_rejected: int, limit: int) -> list[tuple[int, int]]:
    """Up to `limit` distinct (i, j) index pairs; the first min(n_chosen, n_rejected) use distinct i and distinct j.
    Diagonal d pairs chosen i with rejected (i + d) mod n_rejected, which covers every combination exactly once."""
    out: list[tuple[int, int]] = []
    for d in range(n_rejected):
        for i in range(n_chosen):
            if len(out) == limit:
                return out
            out.append((i, (i + d) % n_rejected))
    return out


def pair_question(samples: Sequence[Sample], *, pairs_per_question: int = 1, seed: int = 0,
                  drop_truncated: bool = False) -> tuple[list[PairChoice], QuestionStats]:
    """Pairs for the samples of one question (all with the same problem_id)."""
    if pairs_per_question < 1:
        raise ValueError(f"pairs_per_question must be >= 1, got {pairs_per_question}")
    stats = QuestionStats(samples=len(samples))
    usable = []
    for s in samples:
        if not s.has_answer:
            stats.no_answer += 1
        elif drop_truncated and s.finish_reason == "length":
            stats.truncated_dropped += 1
        else:
            usable.append(s)
    stats.correct = sum(1 for s in usable if s.correct)
    wrong_all = [s for s in usable if not s.correct]
    stats.wrong_with_answer = len(wrong_all)
    stats.distinct_wrong_answers = len({sample_key(s) for s in wrong_all})

    unique, stats.duplicates = _dedupe(usable)
    correct = [s for s in unique if s.correct]
    top = most_frequent_wrong_group(wrong_all)
    if not correct or top is None:
        return [], stats
    top_key, top_group = top
    rejected_pool = [s for s in unique if not s.correct and sample_key(s) == top_key]

    problem_id = samples[0].problem_id
    # A string seed goes through sha512 in random.Random: stable across processes and PYTHONHASHSEED.
    rng = random.Random(f"{seed}:{problem_id}")
    rng.shuffle(correct)
    rng.shuffle(rejected_pool)
    picks = _combinations(len(correct), len(rejected_pool), pairs_per_question)
    pairs = [PairChoice(correct[i], rejected_pool[j], rank, len(top_group)) for rank, (i, j) in enumerate(picks)]
    stats.pairs = len(pairs)
    return pairs, stats


def build_pairs(samples: Iterable[Sample], *, pairs_per_question: int = 1, seed: int = 0,
                drop_truncated: bool = False) -> tuple[list[PairChoice], PairingStats]:
    """Pairs for every question, questions in order of first appearance; and the statistics of the whole set."""
    by_question: dict[str, list[Sample]] = {}
    for s in samples:
        by_question.setdefault(s.problem_id, []).append(s)
    all_pairs: list[PairChoice] = []
    stats = PairingStats()
    for problem_id, group in by_question.items():
        pairs, q = pair_question(group, pairs_per_question=pairs_per_question, seed=seed,
                                 drop_truncated=drop_truncated)
        all_pairs.extend(pairs)
        stats.add(problem_id, q)
    return all_pairs, stats


def sample_files(samples_dir: str | Path) -> list[Path]:
    """The sample stage's shards, in name order (shard names sort in work order)."""
    return sorted(Path(samples_dir).glob("shard-*.jsonl"))


def read_samples(samples_dir: str | Path) -> list[Sample]:
    """Every graded sample of a samples directory; a malformed row raises DataError naming file, line and field."""
    files = sample_files(samples_dir)
    if not files:
        raise DataError(f"{samples_dir}: no sample shards (shard-*.jsonl)")
    return [Sample.from_dict(obj, f"{path}:{lineno}") for path in files for lineno, obj in iter_jsonl(path)]
