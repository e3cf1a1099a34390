"""The statistics behind the tables: known quantiles, interval coverage, and the paired bootstrap's power and size."""

from __future__ import annotations

import math

import numpy as np
import pytest

from adpo_eval.stats import bootstrap_ci, mean_ci, paired_bootstrap, t_cdf, t_quantile


@pytest.mark.parametrize(("df", "expected"), [(1, 12.7062), (2, 4.3027), (4, 2.7764), (10, 2.2281), (30, 2.0423),
                                              (1000, 1.9623)])
def test_t_quantile_matches_tables(df, expected):
    assert t_quantile(0.975, df) == pytest.approx(expected, abs=1e-3)
    assert t_cdf(t_quantile(0.975, df), df) == pytest.approx(0.975, abs=1e-9)
    assert t_quantile(0.025, df) == pytest.approx(-expected, abs=1e-3)


def test_mean_ci_by_hand():
    ci = mean_ci([1.0, 2.0, 3.0])
    half = 4.3027 * 1.0 / math.sqrt(3)  # sd = 1, t(0.975, 2)
    assert ci.estimate == 2.0 and ci.n == 3
    assert ci.low == pytest.approx(2 - half, abs=1e-3) and ci.high == pytest.approx(2 + half, abs=1e-3)
    single = mean_ci([0.4])
    assert single.estimate == 0.4 and math.isnan(single.low) and math.isnan(single.high)


def test_mean_ci_covers_the_true_mean_95_percent_of_the_time():
    rng = np.random.default_rng(1)
    samples = rng.normal(10.0, 3.0, size=(2000, 4))
    hits = sum(ci.low <= 10.0 <= ci.high for ci in map(mean_ci, samples))
    assert 0.93 <= hits / 2000 <= 0.97


def test_bootstrap_ci_covers_a_known_proportion():
    rng = np.random.default_rng(2)
    p, n, reps = 0.3, 200, 300
    hits = 0
    for i in range(reps):
        ci = bootstrap_ci(rng.random(n) < p, n_resamples=1000, seed=i)
        hits += ci.low <= p <= ci.high
    # The percentile bootstrap of a proportion at n=200 is close to nominal.
    assert 0.90 <= hits / reps <= 0.98


def test_bootstrap_ci_estimate_is_the_sample_statistic():
    x = np.array([0, 1, 1, 1, 0, 1], dtype=float)
    ci = bootstrap_ci(x, n_resamples=500)
    assert ci.estimate == pytest.approx(4 / 6) and ci.low < ci.estimate < ci.high
    med = bootstrap_ci(x, lambda a: np.median(a, axis=-1), n_resamples=500)
    assert med.estimate == 1.0


def _flip(x: np.ndarray, rate: float, rng, direction: str) -> np.ndarray:
    y = x.copy()
    idx = np.flatnonzero(x == (1 if direction == "down" else 0))
    chosen = rng.choice(idx, size=int(rate * x.size), replace=False)
    y[chosen] = 1 - y[chosen]
    return y


def test_paired_bootstrap_detects_a_real_difference():
    rng = np.random.default_rng(3)
    a = (rng.random(400) < 0.6).astype(float)
    b = _flip(a, 0.06, rng, "down")  # b loses 24 problems a solves: 6 points worse
    result = paired_bootstrap(a, b, n_resamples=4000)
    assert result.difference == pytest.approx(0.06)
    assert result.low > 0 and result.p_value < 0.01


def test_paired_bootstrap_does_not_detect_a_null_difference_too_often():
    rng = np.random.default_rng(4)
    false_positives = 0
    reps = 150
    for i in range(reps):
        a = (rng.random(300) < 0.5).astype(float)
        # Same expected accuracy: as many problems flip up as down on average, at random.
        noise = rng.random(300) < 0.15
        b = np.where(noise, (rng.random(300) < 0.5).astype(float), a)
        false_positives += paired_bootstrap(a, b, n_resamples=1000, seed=i).p_value < 0.05
    assert false_positives / reps <= 0.10


def test_pairing_is_what_gives_power():
    """A 3-point gain on shared problems is clear when paired, and lost when the pairing is broken."""
    rng = np.random.default_rng(5)
    a = (rng.random(600) < 0.5).astype(float)
    b = _flip(a, 0.03, rng, "down")
    paired = paired_bootstrap(a, b, n_resamples=4000)
    unpaired = paired_bootstrap(a, rng.permutation(b), n_resamples=4000)
    assert paired.p_value < 0.01
    assert (paired.high - paired.low) < 0.5 * (unpaired.high - unpaired.low)


def test_paired_bootstrap_averages_over_seeds():
    rng = np.random.default_rng(6)
    base = (rng.random(300) < 0.5).astype(float)
    # Three seeds of each method that disagree with each other on 20% of the problems.
    a = np.stack([np.where(rng.random(300) < 0.2, 1 - base, base) for _ in range(3)])
    b = np.stack([np.where(rng.random(300) < 0.2, 1 - base, base) for _ in range(3)])
    one_seed = paired_bootstrap(a[0], b[0], n_resamples=2000)
    three = paired_bootstrap(a, b, n_resamples=2000)
    assert three.seeds_a == 3 and three.problems == 300
    assert three.difference == pytest.approx(a.mean() - b.mean())
    assert three.p_value > 0.05
    assert (three.high - three.low) < (one_seed.high - one_seed.low)  # more seeds, tighter


def test_matched_seeds_remove_the_variance_the_methods_share():
    rng = np.random.default_rng(11)
    # Seeds that move both methods a lot (each seed its own data), and a method that, on every seed, gets the same
    # problems right as the other plus 2% more.
    seeds = [np.where(rng.random(1000) < 0.5, 1.0, 0.0) * (rng.random(1000) < p) for p in (0.5, 0.7, 0.9, 0.6, 0.8)]
    b = np.stack(seeds)
    a = b.copy()
    for row in a:
        wrong = np.flatnonzero(row == 0)
        row[rng.choice(wrong, size=20, replace=False)] = 1.0
    independent = paired_bootstrap(a, b, n_resamples=2000)
    matched = paired_bootstrap(a, b, n_resamples=2000, matched_seeds=True)
    assert matched.difference == independent.difference == pytest.approx(0.02)
    assert independent.low < 0 < independent.high  # the seeds' spread swamps the difference
    assert 0 < matched.low <= matched.high and matched.p_value < 0.01
    with pytest.raises(ValueError, match="as many seeds"):
        paired_bootstrap(a[:3], b, matched_seeds=True)


def test_paired_bootstrap_rejects_mismatched_problems():
    with pytest.raises(ValueError, match="same problems"):
        paired_bootstrap([1, 0, 1], [1, 0])
