"""The one record type every stage speaks: a problem with its gold answer, from GSM8K, MATH or the toy task."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from adpo.io import DataError, atomic_write_jsonl, iter_jsonl, require_field

DATASETS = ("gsm8k", "math")


@dataclass(frozen=True)
class Problem:
    id: str
    dataset: str  # "gsm8k" or "math": decides prompts and grading (the toy task is "gsm8k"-shaped)
    question: str
    gold: str  # final answer as a string ("18", "\\frac{3}{4}")
    solution: str | None = None  # worked solution, where the source has one
    subject: str | None = None  # MATH only
    level: int | None = None  # MATH only

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, obj: dict[str, Any], where: str) -> Problem:
        dataset = require_field(obj, "dataset", str, where, non_empty=True)
        if dataset not in DATASETS:
            raise DataError(f"{where}: field 'dataset' must be one of {DATASETS}, got {dataset!r}")
        level = obj.get("level")
        if level is not None and (not isinstance(level, int) or isinstance(level, bool)):
            raise DataError(f"{where}: field 'level' must be int, got {type(level).__name__}")
        for optional in ("solution", "subject"):
            if obj.get(optional) is not None and not isinstance(obj[optional], str):
                raise DataError(f"{where}: field '{optional}' must be str, got {type(obj[optional]).__name__}")
        return cls(
            id=str(require_field(obj, "id", (str, int), where)),
            dataset=dataset,
            question=require_field(obj, "question", str, where, non_empty=True),
            gold=require_field(obj, "gold", str, where, non_empty=True),
            solution=obj.get("solution"),
            subject=obj.get("subject"),
            level=level,
        )


def write_problems(path: str | Path, problems: list[Problem]) -> Path:
    return atomic_write_jsonl(path, (p.to_dict() for p in problems))


def read_problems(path: str | Path) -> list[Problem]:
    """Problems from a prepared JSONL file; a malformed line (or a file without problems) raises DataError naming
    file, line and field."""
    return [Problem.from_dict(obj, f"{path}:{lineno}") for lineno, obj in iter_jsonl(path, require="problems")]
