"""Confidence intervals and paired comparisons for accuracies: pure numpy, no I/O.

- `mean_ci`: mean over seeds with a Student-t interval (the usual "mean ± CI over n seeds").
- `bootstrap_ci`: percentile bootstrap of any statistic of one sample.
- `paired_bootstrap`: two methods graded on the same problems (0/1 per problem, optionally several seeds each):
  resamples problems (the same draw for both methods, which is what makes it paired) and, when a method has several
  seeds, its seeds too; returns the accuracy difference, its percentile interval and a two-sided p-value.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz's method)."""
    tiny, qab, qap, qam = 1e-300, a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        m2 = 2 * m
        for aa in (m * (b - m) * x / ((qam + m2) * (a + m2)), -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1.0 + aa * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + aa / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def regularized_beta(a: float, b: float, x: float) -> float:
    """I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - math.exp(log_front) * _betacf(b, a, 1.0 - x) / b


def t_cdf(t: float, df: float) -> float:
    tail = 0.5 * regularized_beta(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


def t_quantile(p: float, df: float) -> float:
    """Inverse of the Student-t CDF, by bisection (exact to ~1e-10)."""
    if not 0.0 < p < 1.0:
        raise ValueError(f"p must be in (0, 1), got {p}")
    if p < 0.5:
        return -t_quantile(1.0 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12:
            break
    return 0.5 * (lo + hi)


@dataclass(frozen=True)
class Interval:
    estimate: float
    low: float
    high: float
    n: int

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2.0


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> Interval:
    """Mean with a Student-t interval; with one value the interval is undefined (NaN)."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        raise ValueError("mean_ci of no values")
    mean = float(x.mean())
    if x.size < 2:
        return Interval(mean, math.nan, math.nan, 1)
    half = t_quantile(0.5 + confidence / 2.0, x.size - 1) * float(x.std(ddof=1)) / math.sqrt(x.size)
    return Interval(mean, mean - half, mean + half, int(x.size))


def bootstrap_ci(values: Sequence[float], statistic: Callable[[np.ndarray], np.ndarray] | None = None, *,
                 confidence: float = 0.95, n_resamples: int = 10_000, seed: int = 0) -> Interval:
    """Percentile bootstrap; `statistic` maps a (resamples, n) array to (resamples,) (default: the mean)."""
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        raise ValueError("bootstrap_ci of no values")
    stat = statistic or (lambda a: a.mean(axis=-1))
    rng = np.random.default_rng(seed)
    draws = stat(x[rng.integers(0, x.size, size=(n_resamples, x.size))])
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(draws, [alpha, 1.0 - alpha])
    return Interval(float(stat(x[None, :])[0]), float(low), float(high), int(x.size))


@dataclass(frozen=True)
class PairedComparison:
    difference: float  # accuracy(a) - accuracy(b), as fractions
    low: float
    high: float
    p_value: float  # two-sided, for "no difference"
    problems: int
    seeds_a: int
    seeds_b: int


def _as_matrix(x: Sequence | np.ndarray) -> np.ndarray:
    m = np.asarray(x, dtype=float)
    return m[None, :] if m.ndim == 1 else m


def _seed_rows(rng: np.random.Generator, k: int, seeds: int) -> np.ndarray:
    return rng.integers(0, seeds, size=(k, seeds)) if seeds > 1 else np.zeros((k, 1), int)


def paired_bootstrap(a: Sequence | np.ndarray, b: Sequence | np.ndarray, *, confidence: float = 0.95,
                     n_resamples: int = 10_000, seed: int = 0, matched_seeds: bool = False) -> PairedComparison:
    """Compare two methods graded on the same problems.

    `a`, `b`: correctness per problem, shape (problems,) or (seeds, problems) with columns in the same problem
    order. Each resample draws problems with replacement (shared by both methods) and seeds with replacement: per
    method, or, with `matched_seeds` (row i of `a` and of `b` ran with the same seed, so the same sampled pairs and
    data order), one draw of seed rows shared by both, which removes the between-seed variance the two methods have
    in common. The p-value is the share of resampled differences, centred on the observed one, at least as far from
    zero as the observed difference (the shifted-null bootstrap test).
    """
    a, b = _as_matrix(a), _as_matrix(b)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"a and b must cover the same problems: {a.shape[1]} != {b.shape[1]}")
    if matched_seeds and a.shape[0] != b.shape[0]:
        raise ValueError(f"matched_seeds needs as many seeds in a as in b: {a.shape[0]} != {b.shape[0]}")
    n = a.shape[1]
    if n == 0:
        raise ValueError("paired_bootstrap of no problems")
    rng = np.random.default_rng(seed)
    observed = float(a.mean() - b.mean())
    diffs = np.empty(n_resamples)
    chunk = max(1, 2_000_000 // (n * max(a.shape[0], b.shape[0])))
    for start in range(0, n_resamples, chunk):
        k = min(chunk, n_resamples - start)
        problems = rng.integers(0, n, size=(k, n))
        shared_rows = _seed_rows(rng, k, a.shape[0]) if matched_seeds else None
        means = []
        for m in (a, b):
            rows = shared_rows if shared_rows is not None else _seed_rows(rng, k, m.shape[0])
            # (k, seeds, n) picks of resampled seeds x resampled problems, averaged.
            means.append(m[rows[:, :, None], problems[:, None, :]].mean(axis=(1, 2)))
        diffs[start:start + k] = means[0] - means[1]
    alpha = (1.0 - confidence) / 2.0
    low, high = np.quantile(diffs, [alpha, 1.0 - alpha])
    extreme = np.count_nonzero(np.abs(diffs - observed) >= abs(observed) - 1e-12)
    p_value = (extreme + 1) / (n_resamples + 1)
    return PairedComparison(observed, float(low), float(high), float(min(1.0, p_value)), n, a.shape[0], b.shape[0])
