"""What matters for proactive service, measured on history: the ``forewarn evaluate`` report.

* **contact coverage**: the share of ``support_contact`` events preceded by an outreach action
  for that customer within ``window`` (default 24 h);
* **lead time**: minutes from that action (the latest one in the window) to the contact;
* **outreach precision**: the share of actions followed, within ``window``, by a contact or a
  cancellation (the customer would have needed help);
* **actions per 1,000 customers per day**: the cost side;
* **churn capture**: the share of churners who got a retention action in the
  ``churn_window`` before they cancelled (for a baseline: any of its actions).

Baselines run on the same history: ``on_errors`` acts on every error the journey reports
(``ERROR_EVENTS``), ``on_errors at equal volume`` on a random sample of those as large as the
rulebook's volume (all of them when there are fewer), and ``random`` on randomly chosen
events, as many as the rulebook acted on. A rulebook is judged at equal volume: acting more
often covers more contacts whatever the judgement. The two sampled baselines are what a
draw covers on average (``sampled``): one draw's coverage lands anywhere in a range about
a quarter either side of that, and a rulebook judged against one draw is judged by luck.

>>> from datetime import UTC, datetime, timedelta
>>> t = datetime(2026, 1, 1, tzinfo=UTC).timestamp()
>>> m = measure([("c1", t + 3600)], [], [("c1", t, "r", "p")], customers=1, days=1)
>>> m.contact_coverage, m.lead_time_minutes.median, m.outreach_precision
(1.0, 60.0, 1.0)
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from statistics import median, quantiles

import numpy as np
from pydantic import BaseModel, ConfigDict

from forewarn.pipeline.results import ScoredEvent

HOUR = 3600.0
DAY = 24 * HOUR
RETENTION_PLAYBOOK = "retention_offer"
#: every error the vocabulary has: what "act on every error" acts on
ERROR_EVENTS = ("payment_failed", "checkout_error", "error_page", "app_crash", "login_failed")

#: (customer id, time in epoch seconds): a support contact, a cancellation
CustomerTime = tuple[str, float]
#: (customer id, time, rule id, playbook)
Act = tuple[str, float, str, str]


class _Report(BaseModel):
    model_config = ConfigDict(frozen=True)


class LeadTime(_Report):
    """Minutes from the latest action in the window to the contact (rounded to 0.1)."""

    median: float | None
    p10: float | None
    p90: float | None


class Measures(_Report):
    """What one set of actions did (a rulebook's, a rule's, a baseline's), rounded."""

    actions: int
    contact_coverage: float
    lead_time_minutes: LeadTime
    outreach_precision: float
    actions_per_1000_customers_per_day: float
    churn_capture: float


def _times_by_customer(pairs: Sequence[CustomerTime]) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for cid, at in pairs:
        out.setdefault(cid, []).append(at)
    for v in out.values():
        v.sort()
    return out


def measure(
    contacts: Sequence[CustomerTime],
    churns: Sequence[CustomerTime],
    actions: Sequence[Act],
    *,
    customers: int,
    days: float,
    window: float = DAY,
    churn_window: float = 14 * DAY,
    any_action_retains: bool = False,
) -> Measures:
    """The report's measures for one set of actions (a rulebook's, or a baseline's)."""
    acted = _times_by_customer([(c, t) for c, t, _, _ in actions])
    retained = (
        acted
        if any_action_retains
        else _times_by_customer([(c, t) for c, t, _, p in actions if p == RETENTION_PLAYBOOK])
    )
    leads: list[float] = []
    for cid, at in contacts:
        times = acted.get(cid, [])
        i = bisect.bisect_left(times, at)  # actions strictly before the contact
        if i and at - times[i - 1] <= window:
            leads.append((at - times[i - 1]) / 60)
    needing = _times_by_customer([*contacts, *churns])
    useful = 0
    for cid, at, _, _ in actions:
        times = needing.get(cid, [])
        i = bisect.bisect_right(times, at)
        useful += i < len(times) and times[i] - at <= window
    captured = 0
    for cid, at in churns:
        times = retained.get(cid, [])
        i = bisect.bisect_left(times, at)
        captured += bool(i) and at - times[i - 1] <= churn_window
    p10 = p90 = None
    if len(leads) >= 2:
        q = quantiles(leads, n=10, method="inclusive")
        p10, p90 = q[0], q[-1]
    return Measures(
        actions=len(actions),
        contact_coverage=round(len(leads) / len(contacts), 4) if contacts else 0.0,
        lead_time_minutes=LeadTime(
            median=_round(median(leads) if leads else None, 1),
            p10=_round(p10, 1),
            p90=_round(p90, 1),
        ),
        outreach_precision=round(useful / len(actions), 4) if actions else 0.0,
        actions_per_1000_customers_per_day=round(
            len(actions) / max(customers / 1000, 1e-9) / max(days, 1e-9), 2
        ),
        churn_capture=round(captured / len(churns), 4) if churns else 0.0,
    )


#: a sampled baseline is the mean of this many draws (its coverage then moves ~1/7 of one
#: draw's spread)
BASELINE_DRAWS = 50


class SampledMeasures(Measures):
    """A baseline drawn at random, as an expectation: the mean over ``draws`` draws of the
    coverage, the precision and the churn capture, the median of the draws' median lead
    times, and where the middle 90% of single draws' coverage lies."""

    draws: int
    contact_coverage_p5: float
    contact_coverage_p95: float


def sampled(draw: Callable[[int], Measures], draws: int = BASELINE_DRAWS) -> SampledMeasures:
    """Combine ``draw(0)`` ... ``draw(draws - 1)``, the measures of a baseline's draws.

    >>> one = lambda s: Measures(actions=2, contact_coverage=s / 10, lead_time_minutes=LeadTime(
    ...     median=float(s), p10=None, p90=None), outreach_precision=0.5,
    ...     actions_per_1000_customers_per_day=1.0, churn_capture=0.0)
    >>> m = sampled(one, draws=5)
    >>> m.contact_coverage, m.contact_coverage_p5, m.contact_coverage_p95
    (0.2, 0.02, 0.38)
    >>> m.lead_time_minutes.median
    2.0
    """
    ms = [draw(i) for i in range(draws)]
    cov = [m.contact_coverage for m in ms]
    p5, p95 = (cov[0], cov[0]) if draws < 2 else _ends(cov)

    def lead(pick: Callable[[LeadTime], float | None]) -> float | None:
        vs = [v for m in ms if (v := pick(m.lead_time_minutes)) is not None]
        return _round(median(vs), 1) if vs else None

    return SampledMeasures(
        actions=ms[0].actions,
        contact_coverage=round(sum(cov) / draws, 4),
        lead_time_minutes=LeadTime(
            median=lead(lambda t: t.median), p10=lead(lambda t: t.p10), p90=lead(lambda t: t.p90)
        ),
        outreach_precision=round(sum(m.outreach_precision for m in ms) / draws, 4),
        actions_per_1000_customers_per_day=ms[0].actions_per_1000_customers_per_day,
        churn_capture=round(sum(m.churn_capture for m in ms) / draws, 4),
        draws=draws,
        contact_coverage_p5=round(p5, 4),
        contact_coverage_p95=round(p95, 4),
    )


def _ends(values: list[float]) -> tuple[float, float]:
    q = quantiles(values, n=20, method="inclusive")
    return q[0], q[-1]


def _round(v: float | None, digits: int) -> float | None:
    return None if v is None else round(v, digits)


def on_errors_baseline(events: Sequence[tuple[str, float, str]]) -> list[Act]:
    """Act on every failed payment and checkout error. ``events``: (customer, time, type)."""
    return [(c, t, "on_errors", "baseline") for c, t, kind in events if kind in ERROR_EVENTS]


def at_most(acts: list[Act], n: int, seed: int) -> list[Act]:
    """A random sample of ``n`` of ``acts`` (all of them when there are no more), in order."""
    if len(acts) <= n:
        return acts
    picked = random.Random(seed).sample(range(len(acts)), n)
    return [acts[i] for i in sorted(picked)]


def random_baseline(events: Sequence[tuple[str, float, str]], n: int, seed: int) -> list[Act]:
    """Act on ``n`` events chosen at random (the same number of actions as the rulebook)."""
    rng = random.Random(seed)
    picked = rng.sample(range(len(events)), min(n, len(events)))
    return [(events[i][0], events[i][1], "random", "baseline") for i in sorted(picked)]


def roc_auc(scores: Sequence[float], labels: Sequence[int]) -> float | None:
    """Area under the ROC curve (rank statistic, ties averaged); None with one class."""
    s, y = np.asarray(scores, dtype=float), np.asarray(labels, dtype=int)
    pos, neg = int(y.sum()), int(len(y) - y.sum())
    if not pos or not neg:
        return None
    order = s.argsort(kind="mergesort")
    ranks = np.empty(len(s))
    sorted_s = s[order]
    # average ranks over ties
    i = 0
    while i < len(s):
        j = i
        while j + 1 < len(s) and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[y == 1].sum() - pos * (pos + 1) / 2) / (pos * neg))


def followed_by(
    scored: Sequence[ScoredEvent], targets: Sequence[CustomerTime], window: float
) -> list[int]:
    """For each scored event: 1 if the customer has a target within ``window`` after it."""
    by = _times_by_customer(targets)
    out = []
    for e in scored:
        times = by.get(e.customer_id, [])
        i = bisect.bisect_right(times, e.at)
        out.append(int(i < len(times) and times[i] - e.at <= window))
    return out


def _friction(e: ScoredEvent) -> float | None:
    return e.friction


def threshold_crossings(
    scored: Sequence[ScoredEvent],
    threshold: float,
    score: Callable[[ScoredEvent], float | None] = _friction,
) -> list[Act]:
    """Acting whenever a customer's ``score`` (friction) crosses ``threshold`` upward."""
    last: dict[str, float] = {}
    out: list[Act] = []
    for e in scored:
        value = score(e)
        if value is None:
            continue
        prev = last.get(e.customer_id, 0.0)
        last[e.customer_id] = value
        if prev < threshold <= value:
            out.append((e.customer_id, e.at, "threshold", "threshold"))
    return out


@dataclass(slots=True)
class Sweep:
    """The friction-threshold curve, in the report table's units: actions per 1,000
    customers a day against contact coverage."""

    thresholds: list[float] = field(default_factory=list)
    actions_per_1000_customers_per_day: list[float] = field(default_factory=list)
    coverage: list[float] = field(default_factory=list)


def friction_sweep(
    scored: Sequence[ScoredEvent],
    contacts: Sequence[CustomerTime],
    customers: int,
    days: float,
    window: float = DAY,
) -> Sweep:
    """Coverage against volume as the friction threshold moves (each point measured as the
    report measures a rulebook, so the curve and the table's rows compare)."""
    sweep = Sweep()
    for thr in range(10, 100, 5):
        acts = threshold_crossings(scored, float(thr))
        m = measure(contacts, [], acts, customers=customers, days=days, window=window)
        sweep.thresholds.append(float(thr))
        sweep.actions_per_1000_customers_per_day.append(m.actions_per_1000_customers_per_day)
        sweep.coverage.append(m.contact_coverage)
    return sweep


def coverage_on_curve(sweep: Sweep, volume: float) -> float | None:
    """The curve's coverage at ``volume`` actions per 1,000 customers a day (interpolated
    between its points; None outside them: nothing to compare with).

    >>> s = Sweep(thresholds=[80, 60, 40], actions_per_1000_customers_per_day=[10, 50, 100],
    ...           coverage=[0.1, 0.3, 0.5])
    >>> coverage_on_curve(s, 75), coverage_on_curve(s, 200)
    (0.4, None)
    """
    xs = np.array(sweep.actions_per_1000_customers_per_day, dtype=float)
    if xs.size < 2 or not xs.min() <= volume <= xs.max():
        return None
    order = np.argsort(xs, kind="stable")
    ys = np.array(sweep.coverage, dtype=float)[order]
    return round(float(np.interp(volume, xs[order], ys)), 4)
