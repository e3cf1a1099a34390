"""The paper's numbers (table,method,granularity,model,dataset,accuracy), to sit beside ours."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from adpo.config import conf_dir
from adpo.io import DataError

# (method's paper name, paper granularity, model, dataset) -> accuracy in percent
PaperNumbers = dict[tuple[str, str, str, str], float]


def resolve_path(path: str | Path) -> Path:
    """As given (absolute or from the working directory), else relative to the repository."""
    path = Path(path).expanduser()
    if path.is_absolute() or path.exists():
        return path
    return conf_dir().parent / path


def read_paper_numbers(path: Path) -> PaperNumbers:
    frame = pd.read_csv(path)
    needed = {"method", "granularity", "model", "dataset", "accuracy"}
    if not needed <= set(frame.columns):
        raise DataError(f"{path}: needs columns {sorted(needed)}, has {list(frame.columns)}")
    return {(r.method, r.granularity, r.model, r.dataset): float(r.accuracy) for r in frame.itertuples()}


def paper_numbers(path: Path | None) -> tuple[PaperNumbers, str | None]:
    """The numbers, or none and a note saying why (a missing file is not an error: the tables show ours only)."""
    if path is None:
        return {}, "Paper numbers: not requested (aggregate.paper_tables=null)."
    if not path.is_file():
        return {}, f"Paper numbers: {path} not found; tables show our runs only."
    return read_paper_numbers(path), None


def paper_granularity(granularity: str) -> str:
    """Our granularity spelling -> the paper table's ("static:8" -> "static_k8", "adaptive:4" -> "adaptive_m4")."""
    if granularity.startswith("static:"):
        return "static_k" + granularity.split(":", 1)[1]
    if granularity.startswith("adaptive:"):
        return "adaptive_m" + granularity.split(":", 1)[1]
    return granularity
