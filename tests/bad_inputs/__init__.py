"""The catalogue of bad inputs (issue 15): each module here lists BadInput cases for one area; tests/test_bad_inputs.py
runs them all as one parametrised table. A case is a mistake a user makes and what the project must do about it:
fail early with a message naming the key or file:line (`expect`, a regex the error must match), or follow a stated
rule (`expect=None`: the case's own `run` asserts the rule, and must not raise).

To add a case: append a BadInput to the area's CASES (or a new module, listed in AREAS below)."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

AREAS = ("settings", "files", "pairs", "outputs", "runs")


@dataclass(frozen=True)
class BadInput:
    name: str  # the test id: short, says the mistake (e.g. "beta-negative")
    run: Callable[[Path], object]  # does what the user would do, in a fresh tmp directory
    expect: str | None  # a regex the raised error's message must match (search); None: run asserts the stated rule
    error: type[BaseException] | tuple[type[BaseException], ...] = Exception
    rule: str = ""  # in words: what must happen (shown in the README's reliability section)


def all_cases() -> list[BadInput]:
    cases: list[BadInput] = []
    for area in AREAS:
        try:
            module = importlib.import_module(f"tests.bad_inputs.{area}")
        except ModuleNotFoundError as e:
            if e.name != f"tests.bad_inputs.{area}":
                raise
            continue
        cases += module.CASES
    names = [c.name for c in cases]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    assert not duplicates, f"bad-input case names must be unique: {duplicates}"
    return cases
