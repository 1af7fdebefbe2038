"""The statistics of an outreach experiment, as plain functions over counts.

Every function takes counts (events ``k`` out of ``n`` assignments) and returns plain
numbers: the feedback plane calls them when someone asks, so nothing here keeps state.
``tests/unit/test_experiment_statistics.py`` checks them against ``statsmodels`` and by
simulation (a 95% interval covers a known effect 93-97% of the time).

>>> round(wilson(12, 100).low, 4), round(wilson(12, 100).high, 4)
(0.07, 0.1981)
>>> d = newcombe_difference(10, 200, 30, 200)   # treated 5%, holdout 15%
>>> round(d.estimate, 3), round(d.low, 3), round(d.high, 3)
(-0.1, -0.16, -0.042)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist

_NORMAL = NormalDist()


def _z(confidence: float) -> float:
    return _NORMAL.inv_cdf(0.5 + confidence / 2)


@dataclass(frozen=True, slots=True)
class Interval:
    """An estimate with its interval; ``low``/``high`` are None where no interval exists
    (no assignments yet, or a ratio with nothing on one side)."""

    estimate: float | None
    low: float | None
    high: float | None

    def excludes(self, value: float) -> bool:
        """Whether the interval lies wholly on one side of ``value``."""
        if self.low is None or self.high is None:
            return False
        return self.low > value or self.high < value


NO_INTERVAL = Interval(None, None, None)


def wilson(k: int, n: int, confidence: float = 0.95) -> Interval:
    """The rate ``k / n`` with its Wilson score interval (sound at small counts and at 0%)."""
    if n <= 0:
        return NO_INTERVAL
    p = k / n
    z = _z(confidence)
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return Interval(p, max(0.0, centre - half), min(1.0, centre + half))


def newcombe_difference(
    k_treated: int, n_treated: int, k_holdout: int, n_holdout: int, confidence: float = 0.95
) -> Interval:
    """The risk difference treated minus holdout with Newcombe's hybrid score interval
    (method 10: built from the two Wilson intervals)."""
    if n_treated <= 0 or n_holdout <= 0:
        return NO_INTERVAL
    t = wilson(k_treated, n_treated, confidence)
    h = wilson(k_holdout, n_holdout, confidence)
    assert t.estimate is not None and t.low is not None and t.high is not None
    assert h.estimate is not None and h.low is not None and h.high is not None
    d = t.estimate - h.estimate
    low = d - math.sqrt((t.estimate - t.low) ** 2 + (h.high - h.estimate) ** 2)
    high = d + math.sqrt((t.high - t.estimate) ** 2 + (h.estimate - h.low) ** 2)
    return Interval(d, low, high)


def risk_ratio(
    k_treated: int, n_treated: int, k_holdout: int, n_holdout: int, confidence: float = 0.95
) -> Interval:
    """The risk ratio treated over holdout with the log (Katz) interval; no interval when
    either arm has no events."""
    if n_treated <= 0 or n_holdout <= 0 or k_holdout == 0:
        return NO_INTERVAL
    ratio = (k_treated / n_treated) / (k_holdout / n_holdout)
    if k_treated == 0:
        return Interval(ratio, None, None)
    se = math.sqrt(1 / k_treated - 1 / n_treated + 1 / k_holdout - 1 / n_holdout)
    z = _z(confidence)
    return Interval(ratio, ratio * math.exp(-z * se), ratio * math.exp(z * se))


def number_needed_to_treat(difference: Interval) -> Interval:
    """Actions per event avoided (or caused), only where the difference's interval
    excludes 0: otherwise the number is unbounded and means nothing.

    >>> number_needed_to_treat(Interval(-0.1, -0.16, -0.04))
    Interval(estimate=10.0, low=6.25, high=25.0)
    """
    if not difference.excludes(0.0):
        return NO_INTERVAL
    assert difference.estimate is not None and difference.low is not None
    assert difference.high is not None
    ends = sorted((1 / abs(difference.low), 1 / abs(difference.high)))
    return Interval(1 / abs(difference.estimate), ends[0], ends[1])


def sample_ratio_mismatch(n_treated: int, n_holdout: int, holdout_share: float) -> float | None:
    """The p-value of a chi-square test (1 degree of freedom) that the holdout arm's share
    of assignments is the configured one. A tiny p-value (below 0.001, say) means the
    assignment is broken, and no effect measured on it can be trusted.

    >>> round(sample_ratio_mismatch(900, 100, 0.10), 3), sample_ratio_mismatch(500, 500, 0.1) < 1e-6
    (1.0, True)
    """
    n = n_treated + n_holdout
    if n == 0 or not 0 < holdout_share < 1:
        return None
    expected_holdout = n * holdout_share
    expected_treated = n - expected_holdout
    chi2 = (n_holdout - expected_holdout) ** 2 / expected_holdout + (
        n_treated - expected_treated
    ) ** 2 / expected_treated
    # chi-square with one degree of freedom is a squared standard normal
    return 2 * (1 - _NORMAL.cdf(math.sqrt(chi2)))


#: the mixing variance of the always-valid test, on the scale of a difference in rates:
#: it is most powerful for effects of about this size (5 points)
MIXING_SD = 0.05


def _difference_variance(k_t: int, n_t: int, k_h: int, n_h: int) -> float:
    # pooled Bernoulli variance, floored so that a zero-event start is not infinitely sure
    pooled = (k_t + k_h + 1) / (n_t + n_h + 2)
    return pooled * (1 - pooled) * (1 / n_t + 1 / n_h)


def always_valid_p_value(
    k_treated: int, n_treated: int, k_holdout: int, n_holdout: int, mixing_sd: float = MIXING_SD
) -> float | None:
    """A p-value for "no difference" that stays valid however often it is looked at: the
    mixture sequential probability ratio test with a normal mixture (Johari et al., "Peeking
    at A/B tests", 2017). Reading a dashboard every minute and stopping when this falls
    below 0.05 is wrong at most 5% of the time; a fixed-sample p-value read that way is not.
    """
    if n_treated <= 0 or n_holdout <= 0:
        return None
    v = _difference_variance(k_treated, n_treated, k_holdout, n_holdout)
    tau2 = mixing_sd**2
    d = k_treated / n_treated - k_holdout / n_holdout
    log_lambda = 0.5 * math.log(v / (v + tau2)) + tau2 * d * d / (2 * v * (v + tau2))
    return min(1.0, math.exp(-log_lambda))


def confidence_sequence(
    k_treated: int,
    n_treated: int,
    k_holdout: int,
    n_holdout: int,
    confidence: float = 0.95,
    mixing_sd: float = MIXING_SD,
) -> Interval:
    """The difference in rates with an interval that holds at every look at once (the
    confidence sequence of the same mixture test): wider than the fixed-sample interval,
    the price of reading it continuously."""
    if n_treated <= 0 or n_holdout <= 0:
        return NO_INTERVAL
    v = _difference_variance(k_treated, n_treated, k_holdout, n_holdout)
    tau2 = mixing_sd**2
    alpha = 1 - confidence
    half = math.sqrt(v * (v + tau2) / tau2 * (2 * math.log(1 / alpha) + math.log((v + tau2) / v)))
    d = k_treated / n_treated - k_holdout / n_holdout
    return Interval(d, d - half, d + half)


def benjamini_hochberg(p_values: Sequence[float | None]) -> list[float | None]:
    """Adjusted p-values controlling the false discovery rate across rules (step-up);
    a rule without a p-value keeps None and does not count.

    >>> benjamini_hochberg([0.01, 0.04, None, 0.03])
    [0.03, 0.04, None, 0.04]
    """
    present = sorted((p, i) for i, p in enumerate(p_values) if p is not None)
    m = len(present)
    adjusted: list[float | None] = [None] * len(p_values)
    running = 1.0
    for rank in range(m, 0, -1):
        p, i = present[rank - 1]
        running = min(running, p * m / rank)
        adjusted[i] = running
    return adjusted


def minimum_detectable_effect(
    n_treated: int,
    n_holdout: int,
    baseline_rate: float,
    confidence: float = 0.95,
    power: float = 0.8,
) -> float | None:
    """The smallest difference in rates (absolute) that the current sample would detect
    with the given power in a two-sided test at the baseline rate: how big an effect has to
    be before these counts can show it."""
    if n_treated <= 0 or n_holdout <= 0 or not 0 < baseline_rate < 1:
        return None
    z = _z(confidence) + _NORMAL.inv_cdf(power)
    return z * math.sqrt(baseline_rate * (1 - baseline_rate) * (1 / n_treated + 1 / n_holdout))
