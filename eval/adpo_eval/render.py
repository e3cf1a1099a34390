"""Tables as text: Markdown, LaTeX (booktabs) and CSV files."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from adpo.io import atomic_write_text

MISSING = "–"
# Columns that name a row (left-aligned in LaTeX); group-by keys (dotted config keys) count too.
LABEL_COLUMNS = ("Model", "Dataset", "Method", "Granularity", "A", "B")
_LATEX_SPECIAL = {"&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{", "}": r"\}",
                  "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "\\": r"\textbackslash{}"}


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def to_markdown(frame: pd.DataFrame) -> str:
    if frame.empty:
        return "_(no rows)_\n"
    cols = [str(c) for c in frame.columns]

    def esc(v: Any) -> str:
        return MISSING if _is_missing(v) else str(v).replace("|", "\\|")

    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(esc(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines) + "\n"


def _latex_escape(value: Any) -> str:
    text = MISSING if _is_missing(value) else str(value)
    text = "".join(_LATEX_SPECIAL.get(ch, ch) for ch in text)
    return text.replace("±", r"$\pm$").replace("–", "--")


def _leading(columns: Iterable[Any], labels: Sequence[str]) -> Iterable[Any]:
    for c in columns:
        if str(c) not in labels and "." not in str(c):
            return
        yield c


def to_latex(frame: pd.DataFrame, caption: str = "") -> str:
    """A booktabs tabular (needs \\usepackage{booktabs})."""
    if frame.empty:
        return f"% {caption}: no rows\n"
    labels = sum(1 for _ in _leading(frame.columns, LABEL_COLUMNS))
    align = "l" * labels + "r" * (len(frame.columns) - labels)
    lines = [f"% {caption}" if caption else "%", rf"\begin{{tabular}}{{{align}}}", r"\toprule",
             " & ".join(_latex_escape(c) for c in frame.columns) + r" \\", r"\midrule"]
    lines += [" & ".join(_latex_escape(v) for v in row) + r" \\" for row in frame.itertuples(index=False)]
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def write_table(out: Path, name: str, display: pd.DataFrame, numeric: pd.DataFrame, caption: str) -> None:
    """name.md and name.tex show the display table; name.csv holds the numbers."""
    atomic_write_text(out / f"{name}.md", to_markdown(display))
    atomic_write_text(out / f"{name}.tex", to_latex(display, caption))
    atomic_write_text(out / f"{name}.csv", numeric.to_csv(index=False))
