"""Where in an answer the preference acts: statistics of per-position implicit rewards (numpy only, no model).

A pair's implicit rewards are r_t = beta * (log pi(y_t) - log pi_ref(y_t)) for every response token, chosen and
rejected. Two anchors place them in the answer: the first divergence (the first token where chosen and rejected
differ; before it both share prompt and prefix, so their rewards there are equal) and the rejected answer's first
error (adpo_eval.first_error, mapped to its token). The question the statistics answer: does the negative reward of
a rejected answer sit at and after its first error, or is it spread over the answer? Against a uniform spread, the
share of negative reward at/after the error would equal the share of tokens there; `excess_share_after_error` is the
difference.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from adpo_eval.stats import Interval, bootstrap_ci, mean_ci

# Per-pair statistics summarised per run and per group of runs, with what each means (for tables and the README).
STATISTICS: dict[str, str] = {
    "excess_share_after_error": "share of the rejected answer's negative reward at/after its first error, minus "
                                "the share of its tokens there (0: spread evenly; > 0: concentrated at the error)",
    "excess_share_after_error_from_divergence": "the same, counting only from the first divergence on, for pairs "
                                                "whose answers diverge before the error: does the reward find the "
                                                "error, or only where the answers differ?",
    "neg_share_after_error": "share of the rejected answer's negative reward (sum of max(-r_t, 0)) at/after its "
                             "first error",
    "token_share_after_error": "share of the rejected answer's tokens at/after its first error",
    "mean_reward_before_error": "mean r_t of the rejected answer's tokens before its first error",
    "mean_reward_after_error": "mean r_t of the rejected answer's tokens at/after its first error",
    "reward_drop_at_error": "mean r_t at/after the first error minus mean r_t before it",
    "reward_at_error": "r_t of the first erroneous token",
    "chosen_mean_reward_after_divergence": "mean r_t of the chosen answer's tokens from the first divergence on",
    "rejected_mean_reward_after_divergence": "mean r_t of the rejected answer's tokens from the first divergence on",
    "margin": "sum of chosen r_t minus sum of rejected r_t (DPO's beta-scaled margin)",
}


@dataclass(frozen=True)
class PairRewards:
    """One pair's per-token implicit rewards and its anchors (token indices into the response, EOS included)."""

    pair_id: str
    chosen: np.ndarray
    rejected: np.ndarray
    first_divergence: int
    first_error: int | None  # None: no error located in the rejected answer


def first_divergence(chosen_ids: Sequence[int], rejected_ids: Sequence[int]) -> int:
    """The first index where the two responses' tokens differ (the shorter one's length if one extends the other)."""
    a, b = np.asarray(chosen_ids), np.asarray(rejected_ids)
    n = min(a.size, b.size)
    differ = np.flatnonzero(a[:n] != b[:n])
    return int(differ[0]) if differ.size else n


def _mean(x: np.ndarray) -> float:
    return float(x.mean()) if x.size else math.nan


def pair_statistics(p: PairRewards) -> dict[str, float]:
    """Every statistic of STATISTICS for one pair (NaN where it is undefined: no error located, an empty side)."""
    chosen, rejected = np.asarray(p.chosen, float), np.asarray(p.rejected, float)
    d = p.first_divergence
    out = {name: math.nan for name in STATISTICS}
    out["margin"] = float(chosen.sum() - rejected.sum())
    out["chosen_mean_reward_after_divergence"] = _mean(chosen[d:])
    out["rejected_mean_reward_after_divergence"] = _mean(rejected[d:])
    e, n = p.first_error, rejected.size
    if e is None or not 0 <= e < n:
        return out
    negative = np.clip(-rejected, 0.0, None)
    total = float(negative.sum())
    out["token_share_after_error"] = (n - e) / n
    if total > 0:
        out["neg_share_after_error"] = float(negative[e:].sum()) / total
        out["excess_share_after_error"] = out["neg_share_after_error"] - out["token_share_after_error"]
        if d < e:
            past = float(negative[d:].sum())
            if past > 0:
                out["excess_share_after_error_from_divergence"] = (float(negative[e:].sum()) / past
                                                                   - (n - e) / (n - d))
    out["mean_reward_before_error"] = _mean(rejected[:e])
    out["mean_reward_after_error"] = _mean(rejected[e:])
    out["reward_drop_at_error"] = out["mean_reward_after_error"] - out["mean_reward_before_error"]
    out["reward_at_error"] = float(rejected[e])
    return out


def summarize_pairs(rows: Iterable[Mapping[str, float]], *, confidence: float = 0.95, n_resamples: int = 2000,
                    seed: int = 0) -> dict[str, Interval | None]:
    """Per statistic: the mean over pairs where it is defined, with a percentile-bootstrap interval over pairs."""
    rows = list(rows)
    out: dict[str, Interval | None] = {}
    for name in STATISTICS:
        values = np.array([r[name] for r in rows], dtype=float)
        values = values[np.isfinite(values)]
        out[name] = (bootstrap_ci(values, confidence=confidence, n_resamples=n_resamples, seed=seed)
                     if values.size else None)
    return out


def summarize_runs(run_means: Sequence[Mapping[str, float]], *, confidence: float = 0.95
                   ) -> dict[str, Interval | None]:
    """Per statistic over runs (seeds) of one group: the mean of the runs' means with a Student-t interval (the
    interval is NaN with one run)."""
    out: dict[str, Interval | None] = {}
    for name in STATISTICS:
        values = [float(m[name]) for m in run_means if m.get(name) is not None and math.isfinite(float(m[name]))]
        out[name] = mean_ci(values, confidence) if values else None
    return out


def aligned_mean(series: Sequence[np.ndarray], anchors: Sequence[int | None], *, before: int, after: int
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean of series[i][anchor_i + k] over i for k in [-before, after] (series without an anchor left out):
    (offsets, means, counts); a mean is NaN where no series reaches that offset."""
    offsets = np.arange(-before, after + 1)
    kept = [(np.asarray(s, float), a) for s, a in zip(series, anchors) if a is not None]
    grid = np.full((len(kept), offsets.size), np.nan)
    for row, (values, anchor) in enumerate(kept):
        index = anchor + offsets
        inside = (index >= 0) & (index < values.size)
        grid[row, inside] = values[index[inside]]
    counts = np.isfinite(grid).sum(axis=0)
    sums = np.nansum(grid, axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
    return offsets, means, counts
