"""What matters for proactive service, measured on history: the ``forewarn evaluate`` report.

* **contact coverage**: the share of ``support_contact`` events preceded by an outreach action
  for that customer within ``window`` (default 24 h);
* **lead time**: minutes from that action (the latest one in the window) to the contact;
* **outreach precision**: the share of actions followed, within ``window``, by a contact or a
  cancellation (the customer would have needed help);
* **actions per 1,000 customers per day**: the cost side;
* **churn capture**: the share of churners who got a retention action in the
  ``churn_window`` before they cancelled (for a baseline: any of its actions).

Two baselines run on the same history: ``on_errors`` acts on every ``payment_failed`` and
``checkout_error``; ``random`` acts on randomly chosen events, as many as the rulebook did.

>>> from datetime import UTC, datetime, timedelta
>>> t = datetime(2026, 1, 1, tzinfo=UTC).timestamp()
>>> m = measure([("c1", t + 3600)], [], [("c1", t, "r", "p")], customers=1, days=1)
>>> m.contact_coverage, m.lead_time_minutes.median, m.outreach_precision
(1.0, 60.0, 1.0)
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from statistics import median, quantiles
from typing import Any

import numpy as np
from numpy.typing import NDArray

HOUR = 3600.0
DAY = 24 * HOUR
RETENTION_PLAYBOOK = "retention_offer"
ERROR_EVENTS = ("payment_failed", "checkout_error")

#: (customer id, time in epoch seconds)
Moment = tuple[str, float]
#: (customer id, time, rule id, playbook)
Act = tuple[str, float, str, str]


@dataclass(frozen=True, slots=True)
class LeadTime:
    median: float | None
    p10: float | None
    p90: float | None


@dataclass(frozen=True, slots=True)
class Measures:
    actions: int
    contact_coverage: float
    lead_time_minutes: LeadTime
    outreach_precision: float
    actions_per_1000_customers_per_day: float
    churn_capture: float

    def as_dict(self) -> dict[str, object]:
        return {
            "actions": self.actions,
            "contact_coverage": round(self.contact_coverage, 4),
            "lead_time_minutes": {
                k: None if v is None else round(v, 1)
                for k, v in (
                    ("median", self.lead_time_minutes.median),
                    ("p10", self.lead_time_minutes.p10),
                    ("p90", self.lead_time_minutes.p90),
                )
            },
            "outreach_precision": round(self.outreach_precision, 4),
            "actions_per_1000_customers_per_day": round(self.actions_per_1000_customers_per_day, 2),
            "churn_capture": round(self.churn_capture, 4),
        }


def _times_by_customer(pairs: Sequence[Moment]) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for cid, at in pairs:
        out.setdefault(cid, []).append(at)
    for v in out.values():
        v.sort()
    return out


def measure(
    contacts: Sequence[Moment],
    churns: Sequence[Moment],
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
        contact_coverage=len(leads) / len(contacts) if contacts else 0.0,
        lead_time_minutes=LeadTime(median(leads) if leads else None, p10, p90),
        outreach_precision=useful / len(actions) if actions else 0.0,
        actions_per_1000_customers_per_day=len(actions)
        / max(customers / 1000, 1e-9)
        / max(days, 1e-9),
        churn_capture=captured / len(churns) if churns else 0.0,
    )


def on_errors_baseline(events: Sequence[tuple[str, float, str]]) -> list[Act]:
    """Act on every failed payment and checkout error. ``events``: (customer, time, type)."""
    return [(c, t, "on_errors", "baseline") for c, t, kind in events if kind in ERROR_EVENTS]


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
    scored: Sequence[tuple[str, float, float, float | None]],
    targets: Sequence[Moment],
    window: float,
) -> list[int]:
    """For each scored event: 1 if the customer has a target within ``window`` after it."""
    by = _times_by_customer(targets)
    out = []
    for cid, at, _, _ in scored:
        times = by.get(cid, [])
        i = bisect.bisect_right(times, at)
        out.append(int(i < len(times) and times[i] - at <= window))
    return out


def threshold_crossings(
    scored: Sequence[tuple[str, float, float, float | None]], threshold: float, column: int = 2
) -> list[Act]:
    """Acting whenever a customer's score crosses ``threshold`` upward (column 2: friction)."""
    last: dict[str, float] = {}
    out: list[Act] = []
    for row in scored:
        cid, at = row[0], row[1]
        value = row[column]
        if value is None:
            continue
        prev = last.get(cid, 0.0)
        last[cid] = float(value)
        if prev < threshold <= float(value):
            out.append((cid, at, "threshold", "threshold"))
    return out


@dataclass(slots=True)
class Sweep:
    thresholds: list[float] = field(default_factory=list)
    actions_per_customer: list[float] = field(default_factory=list)
    coverage: list[float] = field(default_factory=list)


def friction_sweep(
    scored: Sequence[tuple[str, float, float, float | None]],
    contacts: Sequence[Moment],
    customers: int,
    window: float = DAY,
) -> Sweep:
    """Coverage against actions per customer as the friction threshold moves."""
    sweep = Sweep()
    for thr in range(10, 100, 5):
        acts = threshold_crossings(scored, float(thr))
        m = measure(contacts, [], acts, customers=customers, days=1, window=window)
        sweep.thresholds.append(float(thr))
        sweep.actions_per_customer.append(len(acts) / max(customers, 1))
        sweep.coverage.append(m.contact_coverage)
    return sweep


def plot_report(
    path: Path,
    scored: Sequence[tuple[str, float, float, float | None]],
    contact_label: Sequence[int],
    sweep: Sweep,
    points: dict[str, tuple[float, float]],
) -> None:
    """Score distributions for events followed by a contact or not, and the coverage curve."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    friction = np.array([s[2] for s in scored])
    y = np.array(contact_label, dtype=bool)
    has_churn = any(s[3] is not None for s in scored)
    fig, axes = plt.subplots(1, 3 if has_churn else 2, figsize=(15 if has_churn else 10, 4.2))
    friction_bins = np.linspace(0, 100, 41)
    _split_histogram(axes[0], friction, y, friction_bins, "Friction", "friction score")
    if has_churn:
        churn = np.array([s[3] or 0.0 for s in scored])
        _split_histogram(axes[1], churn, y, np.linspace(0, 1, 41), "Churn risk", "churn risk")
    ax = axes[-1]
    ax.plot(sweep.actions_per_customer, sweep.coverage, marker=".", label="friction threshold")
    for thr, x, c in zip(sweep.thresholds, sweep.actions_per_customer, sweep.coverage, strict=True):
        if thr % 20 == 0:
            ax.annotate(f"{thr:g}", (x, c), textcoords="offset points", xytext=(4, 4), fontsize=8)
    for k, (name, (x, c)) in enumerate(points.items()):
        ax.scatter([x], [c], s=40, zorder=3)
        # alternate the labels above and below: points often sit close together
        ax.annotate(name, (x, c), textcoords="offset points", xytext=(6, 8 - 18 * (k % 2)),
                    fontsize=9)  # fmt: skip
    ax.set(
        title="Contact coverage vs outreach volume",
        xlabel="actions per customer over the history",
        ylabel="share of support contacts anticipated",
    )
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _split_histogram(
    ax: Any,
    values: NDArray[np.float64],
    contact: NDArray[np.bool_],
    bins: Any,
    what: str,
    unit: str,
) -> None:
    ax.hist(values[~contact], bins=bins, density=True, alpha=0.6, label="no contact within 24 h")
    ax.hist(values[contact], bins=bins, density=True, alpha=0.6, label="contact within 24 h")
    ax.set(title=f"{what} at each event", xlabel=unit, ylabel="density")
    ax.set_yscale("log")
    ax.legend()
