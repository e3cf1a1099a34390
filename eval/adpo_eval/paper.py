"""The paper's numbers (table,method,granularity,model,dataset,accuracy), to sit beside ours.

Read into our spellings so that a lookup is an exact match: granularities as our configs write them ("static_k8" ->
"static:8") and datasets as the test sets they are (method.md: every MATH figure in the paper is MATH-500, so the
paper's "MATH" is "MATH-500"; a run on the full MATH test set, MATH-5000, never meets a paper number).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from adpo.config import conf_dir
from adpo.io import DataError, iter_csv

# The paper's dataset names -> the test sets they were measured on (method.md, "Evaluation").
PAPER_TEST_SETS = {"GSM8K": "GSM8K", "MATH": "MATH-500"}
COLUMNS = ["table", "method", "granularity", "model", "dataset", "accuracy"]


def resolve_path(path: str | Path) -> Path:
    """As given (absolute or from the working directory), else relative to the repository."""
    path = Path(path).expanduser()
    if path.is_absolute() or path.exists():
        return path
    return conf_dir().parent / path


def our_granularity(granularity: str) -> str:
    """The paper table's spelling -> ours ("static_k8" -> "static:8", "adaptive_m4" -> "adaptive:4")."""
    for prefix, kind in (("static_k", "static"), ("adaptive_m", "adaptive")):
        if granularity.startswith(prefix) and granularity[len(prefix):].isdigit():
            return f"{kind}:{granularity[len(prefix):]}"
    return granularity


def read_paper_numbers(path: Path) -> pd.DataFrame:
    """One row per number, in the file's order (which is the paper's row order), in our spellings; a bad row raises
    DataError naming the file, the line and the column."""
    rows = []
    for lineno, row in iter_csv(path, require="the paper's numbers"):
        row.setdefault("table", "main")  # a file of the main table only
        missing = set(COLUMNS) - set(row)
        if missing:
            raise DataError(f"{path}: needs columns {COLUMNS}, lacks {sorted(missing)}")
        try:
            row["accuracy"] = float(row["accuracy"])
        except ValueError:
            raise DataError(f"{path}:{lineno}: field 'accuracy' must be a number, got {row['accuracy']!r}") from None
        rows.append(row)
    frame = pd.DataFrame(rows, columns=COLUMNS)
    frame["granularity"] = frame["granularity"].astype(str).map(our_granularity)
    frame["dataset"] = frame["dataset"].map(lambda d: PAPER_TEST_SETS.get(d, d))
    return frame.reset_index(drop=True)


def paper_numbers(path: Path | None) -> tuple[pd.DataFrame, str | None]:
    """The numbers, or none and a note saying why (a missing file is not an error: the tables show ours only)."""
    if path is None:
        return pd.DataFrame(columns=COLUMNS), "Paper numbers: not requested (aggregate.paper_tables=null)."
    if not path.is_file():
        return pd.DataFrame(columns=COLUMNS), f"Paper numbers: {path} not found; tables show our runs only."
    return read_paper_numbers(path), None
