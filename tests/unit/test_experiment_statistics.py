"""The experiment statistics against statsmodels (a dev-only oracle) and by simulation."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import chisquare
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import normal_power
from statsmodels.stats.proportion import confint_proportions_2indep, proportion_confint

from forewarn.experiments.statistics import (
    always_valid_p_value,
    benjamini_hochberg,
    confidence_sequence,
    minimum_detectable_effect,
    newcombe_difference,
    number_needed_to_treat,
    risk_ratio,
    sample_ratio_mismatch,
    wilson,
)

counts = st.integers(min_value=1, max_value=5000).flatmap(
    lambda n: st.tuples(st.integers(min_value=0, max_value=n), st.just(n))
)


@given(counts, st.sampled_from([0.9, 0.95, 0.99]))
def test_wilson_matches_statsmodels(kn: tuple[int, int], confidence: float) -> None:
    k, n = kn
    low, high = proportion_confint(k, n, alpha=1 - confidence, method="wilson")
    got = wilson(k, n, confidence)
    assert got.estimate == pytest.approx(k / n)
    assert got.low == pytest.approx(low, abs=1e-9)
    assert got.high == pytest.approx(high, abs=1e-9)


@given(counts, counts)
def test_newcombe_difference_matches_statsmodels(t: tuple[int, int], h: tuple[int, int]) -> None:
    low, high = confint_proportions_2indep(t[0], t[1], h[0], h[1], method="newcomb")
    got = newcombe_difference(t[0], t[1], h[0], h[1])
    assert got.low == pytest.approx(low, abs=1e-9)
    assert got.high == pytest.approx(high, abs=1e-9)


@given(counts, counts)
def test_risk_ratio_matches_statsmodels_log_interval(
    t: tuple[int, int], h: tuple[int, int]
) -> None:
    got = risk_ratio(t[0], t[1], h[0], h[1])
    if h[0] == 0:
        assert got.estimate is None
        return
    assert got.estimate == pytest.approx((t[0] / t[1]) / (h[0] / h[1]))
    if t[0] == 0:
        assert got.low is None
        return
    low, high = confint_proportions_2indep(t[0], t[1], h[0], h[1], method="log", compare="ratio")
    assert got.low == pytest.approx(low, rel=1e-9)
    assert got.high == pytest.approx(high, rel=1e-9)


def test_no_interval_without_assignments() -> None:
    assert wilson(0, 0).estimate is None
    assert newcombe_difference(0, 0, 3, 10).low is None
    assert always_valid_p_value(1, 10, 0, 0) is None
    assert minimum_detectable_effect(0, 10, 0.1) is None


def test_number_needed_to_treat_only_when_the_interval_excludes_zero() -> None:
    assert number_needed_to_treat(newcombe_difference(10, 200, 12, 200)).estimate is None
    nnt = number_needed_to_treat(newcombe_difference(10, 400, 60, 400))
    assert nnt.estimate == pytest.approx(8.0)
    assert nnt.low is not None and nnt.high is not None
    assert nnt.low < 8.0 < nnt.high


@given(st.integers(0, 5000), st.integers(1, 5000), st.floats(0.01, 0.5))
def test_sample_ratio_mismatch_matches_a_chi_square_test(
    n_treated: int, n_holdout: int, share: float
) -> None:
    n = n_treated + n_holdout
    expected = [n * (1 - share), n * share]
    oracle = chisquare([n_treated, n_holdout], expected).pvalue
    got = sample_ratio_mismatch(n_treated, n_holdout, share)
    assert got == pytest.approx(oracle, abs=1e-9)


def test_sample_ratio_mismatch_flags_a_broken_split() -> None:
    ok = sample_ratio_mismatch(9_020, 980, 0.10)
    broken = sample_ratio_mismatch(9_300, 700, 0.10)
    assert ok is not None and ok > 0.05
    assert broken is not None and broken < 1e-6


@given(st.lists(st.one_of(st.none(), st.floats(0, 1)), min_size=1, max_size=30))
def test_benjamini_hochberg_matches_statsmodels(p_values: list[float | None]) -> None:
    got = benjamini_hochberg(p_values)
    present = [p for p in p_values if p is not None]
    assert [g is None for g in got] == [p is None for p in p_values]
    if present:
        oracle = iter(multipletests(present, method="fdr_bh")[1])
        for g in got:
            if g is not None:
                assert g == pytest.approx(next(oracle), abs=1e-12)


@pytest.mark.parametrize(("n", "rate"), [(500, 0.1), (3000, 0.05), (20_000, 0.2)])
def test_minimum_detectable_effect_has_the_stated_power(n: int, rate: float) -> None:
    mde = minimum_detectable_effect(n, n, rate)
    assert mde is not None
    std_effect = mde / np.sqrt(rate * (1 - rate) * 2 / n)
    assert normal_power(std_effect, nobs=1, alpha=0.05) == pytest.approx(0.8, abs=0.005)


def test_newcombe_interval_covers_a_known_effect_95_percent_of_the_time() -> None:
    """200 simulated experiments with a true effect of -3 points on a 12% contact rate."""
    rng = np.random.default_rng(7)
    p_holdout, p_treated = 0.12, 0.09
    covered = 0
    for _ in range(200):
        n_t, n_h = 1800, 200
        k_t = int(rng.binomial(n_t, p_treated))
        k_h = int(rng.binomial(n_h, p_holdout))
        d = newcombe_difference(k_t, n_t, k_h, n_h)
        assert d.low is not None and d.high is not None
        covered += d.low <= p_treated - p_holdout <= d.high
    assert 0.93 <= covered / 200 <= 0.97


def test_peeking_at_the_always_valid_p_value_keeps_false_alarms_under_five_percent() -> None:
    """No true effect, and someone looks after every 50 assignments per arm: stopping at
    the first p < 0.05 is wrong at most 5% of the time with the always-valid p-value, and
    far more often with the fixed-sample one (the reason it exists)."""
    rng = np.random.default_rng(11)
    always_valid_alarms = naive_alarms = 0
    runs, looks, step, rate = 200, 40, 50, 0.1
    for _ in range(runs):
        t = rng.random((looks * step,)) < rate
        h = rng.random((looks * step,)) < rate
        valid = naive = False
        for look in range(1, looks + 1):
            n = look * step
            k_t, k_h = int(t[:n].sum()), int(h[:n].sum())
            p = always_valid_p_value(k_t, n, k_h, n)
            valid |= p is not None and p < 0.05
            d = newcombe_difference(k_t, n, k_h, n)
            naive |= d.excludes(0.0)
        always_valid_alarms += valid
        naive_alarms += naive
    assert always_valid_alarms / runs <= 0.05
    assert naive_alarms / runs > 0.15


def test_the_confidence_sequence_is_wider_and_still_finds_a_real_effect() -> None:
    cs = confidence_sequence(180, 4000, 120, 1000)  # 4.5% against 12%
    fixed = newcombe_difference(180, 4000, 120, 1000)
    assert cs.low is not None and cs.high is not None
    assert fixed.low is not None and fixed.high is not None
    assert cs.low < fixed.low and cs.high > fixed.high
    assert cs.high < 0
    p = always_valid_p_value(180, 4000, 120, 1000)
    assert p is not None and p < 0.001


@settings(max_examples=50)
@given(counts, counts)
def test_the_always_valid_p_value_is_a_probability(t: tuple[int, int], h: tuple[int, int]) -> None:
    p = always_valid_p_value(t[0], t[1], h[0], h[1])
    assert p is not None and 0 <= p <= 1
