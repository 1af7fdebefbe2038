"""Proactive coverage: how many support contacts did an outreach action anticipate?

A support contact is *covered* when the same customer was sent an action whose trigger
happened within ``window`` before the contact. Its *lead time* is measured from the latest
such trigger (the conservative choice: the warning closest to the contact).

>>> from datetime import UTC, datetime, timedelta
>>> t = datetime(2026, 1, 1, tzinfo=UTC)
>>> c = proactive_coverage([("c1", t), ("c2", t)], [("c1", t - timedelta(minutes=30))])
>>> c.covered, c.share, c.lead_minutes_median
(1, 0.5, 30.0)
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from statistics import median, quantiles


@dataclass(frozen=True, slots=True)
class Coverage:
    contacts: int
    covered: int
    lead_minutes: tuple[float, ...]

    @property
    def share(self) -> float:
        return self.covered / self.contacts if self.contacts else 0.0

    @property
    def lead_minutes_median(self) -> float | None:
        return median(self.lead_minutes) if self.lead_minutes else None

    @property
    def lead_minutes_p10_p90(self) -> tuple[float, float] | None:
        if len(self.lead_minutes) < 2:
            return None
        q = quantiles(self.lead_minutes, n=10, method="inclusive")
        return q[0], q[-1]


def proactive_coverage(
    contacts: Iterable[tuple[str, datetime]],
    actions: Iterable[tuple[str, datetime]],
    window: timedelta = timedelta(hours=24),
) -> Coverage:
    """``contacts`` and ``actions`` are (customer id, event time) pairs."""
    by_customer: dict[str, list[datetime]] = {}
    for cid, at in actions:
        by_customer.setdefault(cid, []).append(at)
    for times in by_customer.values():
        times.sort()
    n = covered = 0
    leads: list[float] = []
    for cid, at in contacts:
        n += 1
        times = by_customer.get(cid, [])
        i = bisect.bisect_left(times, at)  # actions strictly before the contact
        if i and at - times[i - 1] <= window:
            covered += 1
            leads.append((at - times[i - 1]).total_seconds() / 60)
    return Coverage(n, covered, tuple(leads))
