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
LABEL_COLUMNS = ("Model", "Dataset", "Method", "Granularity", "Row", "A", "B")
# "model / dataset" column names: LaTeX shows the model once over its datasets (a two-line header, as the paper does).
COLUMN_SEP = " / "
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
    return text.replace("±", r"$\pm$").replace("−", "$-$").replace("–", "--")


def _leading(columns: Iterable[Any], labels: Sequence[str]) -> Iterable[Any]:
    for c in columns:
        if str(c) not in labels and "." not in str(c):
            return
        yield c


def to_latex(frame: pd.DataFrame, caption: str = "", note: str = "") -> str:
    """A booktabs table (needs \\usepackage{booktabs}), captioned with the caption and the note."""
    if frame.empty:
        return f"% {caption}: no rows\n"
    labels = sum(1 for _ in _leading(frame.columns, LABEL_COLUMNS))
    align = "l" * labels + "r" * (len(frame.columns) - labels)
    # A table float with a caption, so that what the cells are (n seeds, the interval) is said once, in the PDF too.
    text = " ".join(_latex_escape(t) for t in (caption, note) if t)
    lines = [r"\begin{table}[t]", r"\centering", rf"\caption{{{text}}}" if text else "%",
             rf"\begin{{tabular}}{{{align}}}", r"\toprule", *_latex_header(list(frame.columns), labels), r"\midrule"]
    lines += [" & ".join(_latex_escape(v) for v in row) + r" \\" for row in frame.itertuples(index=False)]
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"


def _latex_header(columns: list[Any], labels: int) -> list[str]:
    """One header line; two when the value columns are "model / dataset": the model spans its datasets."""
    values = [str(c) for c in columns[labels:]]
    if not values or not all(COLUMN_SEP in v for v in values):
        return [" & ".join(_latex_escape(c) for c in columns) + r" \\"]
    tops = [v.split(COLUMN_SEP, 1) for v in values]
    spans: list[list[Any]] = []  # [model, first column, width]
    for i, (model, _) in enumerate(tops):
        if spans and spans[-1][0] == model:
            spans[-1][2] += 1
        else:
            spans.append([model, labels + i + 1, 1])
    first = " & ".join([""] * labels + [rf"\multicolumn{{{w}}}{{c}}{{{_latex_escape(m)}}}" for m, _, w in spans])
    rules = " ".join(rf"\cmidrule(lr){{{start}-{start + w - 1}}}" for _, start, w in spans)
    second = " & ".join([_latex_escape(c) for c in columns[:labels]] + [_latex_escape(d) for _, d in tops])
    return [first + r" \\", rules, second + r" \\"]


def write_table(out: Path, name: str, display: pd.DataFrame, numeric: pd.DataFrame, caption: str,
                note: str = "") -> None:
    """name.md and name.tex show the display table (with the note under it, or as a comment); name.csv the numbers."""
    atomic_write_text(out / f"{name}.md", to_markdown(display) + (f"\n{note}\n" if note else ""))
    atomic_write_text(out / f"{name}.tex", to_latex(display, caption, note))
    atomic_write_text(out / f"{name}.csv", numeric.to_csv(index=False))
