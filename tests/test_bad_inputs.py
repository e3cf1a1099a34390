"""The catalogue of bad inputs (tests/bad_inputs/): every mistake listed there fails early with a message that names
the key or file:line, or is handled by its stated rule."""

from __future__ import annotations

import re

import pytest

from tests.bad_inputs import BadInput, all_cases

CASES = all_cases()


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input(case: BadInput, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a case that writes relative paths writes them here, never into the checkout
    if case.expect is None:
        case.run(tmp_path)
        return
    with pytest.raises(case.error) as caught:
        case.run(tmp_path)
    message = str(caught.value)
    assert re.search(case.expect, message), f"{case.name}: the error does not say {case.expect!r}:\n{message}"
