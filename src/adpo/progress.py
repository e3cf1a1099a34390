"""Progress of a long loop: a tqdm bar for a terminal, and plain lines in the log for everyone else.

A SLURM job's log, or a stage's log under `adpo-pipeline`, cannot show a bar: whatever `progress` says, a stage also
logs one line every `progress_every` seconds (and one at the end),

    progress: train dpo sequence | step 120/1000 12% | 2.31 step/s | elapsed 0:00:52 | ETA 0:06:21 | loss 0.6931 acc 0.52

which `adpo-pipeline` follows to show each running stage's progress live (`parse_progress_line`).
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Mapping
from typing import Any

from tqdm.auto import tqdm

log = logging.getLogger(__name__)

MARKER = "progress: "
_LINE = re.compile(r"progress: (?P<text>.*?)\s*$")
DEFAULT_EVERY_S = 60.0


def progress_every(cfg: Any) -> float | None:
    """cfg.progress_every (seconds between progress lines; null or 0: none), checked."""
    value = cfg.get("progress_every", DEFAULT_EVERY_S) if hasattr(cfg, "get") else DEFAULT_EVERY_S
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
        raise ValueError(f"progress_every must be a number of seconds >= 0 or null, got {value!r}")
    return float(value) or None


def format_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(round(seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    clock = f"{hours}:{minutes:02d}:{secs:02d}"
    return f"{days}d {clock}" if days else clock


def _figure(name: str, value: Any) -> str:
    if isinstance(value, float):
        return f"{name} {value:.4g}" if abs(value) >= 1e-3 or value == 0 else f"{name} {value:.2e}"
    return f"{name} {value}"


class Progress:
    """`total` units of work, `initial` of them already done (a resumed run): a bar when `bar`, and a progress line
    every `every_s` seconds when `every_s` (the first one at the first update after `every_s`; the last at close).

    `figures` (update(..., loss=0.69)) are the loop's key numbers, shown on the bar and in the lines. The rate and
    ETA count only the work done in this process, so a resumed run's ETA is not flattered by its earlier part.
    `enabled=False` (a rank other than 0) makes it silent."""

    def __init__(self, total: int, desc: str, unit: str = "it", *, initial: int = 0, bar: bool = True,
                 every_s: float | None = DEFAULT_EVERY_S, enabled: bool = True, logger: logging.Logger | None = None,
                 clock=time.monotonic):
        self.total, self.desc, self.unit = int(total), desc, unit
        self.initial = self.done = int(initial)
        self.every_s = every_s if enabled else None
        self.logger = logger or log
        self.clock = clock
        self.started = self.last_line = clock()
        self.figures: dict[str, Any] = {}
        self.closed = False
        self.bar = tqdm(total=self.total, initial=self.initial, desc=desc, unit=unit, dynamic_ncols=True,
                        disable=not (bar and enabled))

    def update(self, n: int = 1, **figures: Any) -> None:
        self.done += n
        self.figures.update(figures)
        self.bar.update(n)
        if figures:
            self.bar.set_postfix({k: (f"{v:.4g}" if isinstance(v, float) else v) for k, v in self.figures.items()},
                                 refresh=False)
        if self.every_s and self.clock() - self.last_line >= self.every_s:
            self.write_line()

    def set_figures(self, **figures: Any) -> None:
        self.figures.update(figures)

    def line(self) -> str:
        elapsed = self.clock() - self.started
        new = self.done - self.initial
        rate = new / elapsed if elapsed > 0 else math.nan
        remaining = (self.total - self.done) / rate if rate and rate > 0 else math.nan
        pct = 100.0 * self.done / self.total if self.total else 100.0
        eta = format_duration(remaining) if self.done < self.total else "0:00:00"
        parts = [self.desc, f"{self.unit} {self.done}/{self.total} {pct:.0f}%",
                 f"{rate:.3g} {self.unit}/s" if math.isfinite(rate) else f"? {self.unit}/s",
                 f"elapsed {format_duration(elapsed)}", f"ETA {eta}"]
        if self.figures:
            parts.append(" ".join(_figure(k, v) for k, v in self.figures.items()))
        return MARKER + " | ".join(parts)

    def write_line(self) -> None:
        self.last_line = self.clock()
        self.logger.info(self.line())

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.bar.close()
        if self.every_s:
            self.write_line()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def parse_progress_line(line: str) -> str | None:
    """The text of a progress line as a stage logged it (after any logging prefix), or None."""
    match = _LINE.search(line)
    return match.group("text") if match else None


def last_progress(text: str) -> str | None:
    """The newest progress line's text in a piece of a log."""
    for line in reversed(text.splitlines()):
        found = parse_progress_line(line)
        if found is not None:
            return found
    return None


def mean_of(rows: list[Mapping[str, Any]], key: str) -> float | None:
    """The mean of a boolean or numeric field over rows (accuracy so far), None when no row has it."""
    values = [float(r[key]) for r in rows if r.get(key) is not None]
    return sum(values) / len(values) if values else None


class LogFollower:
    """The progress lines a running stage has added to its log since the last call (the log is read as it grows;
    a line still being written is kept for the next call)."""

    def __init__(self, path) -> None:
        self.path = path
        self.offset = 0
        self.partial = b""

    def new_lines(self) -> list[str]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return []
        self.offset += len(data)
        data = self.partial + data
        # tqdm redraws with \r: a complete line ends in \n or \r.
        cut = max(data.rfind(b"\n"), data.rfind(b"\r")) + 1
        self.partial = data[cut:]
        text = data[:cut].decode("utf-8", errors="replace")
        return [found for line in text.splitlines() if (found := parse_progress_line(line)) is not None]
