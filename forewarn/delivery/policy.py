"""When an action may be sent, what an attempt's result means, how long to wait before the
next one, and when a destination is paused. Pure: every clock and every random number is
passed in.

>>> from datetime import UTC, datetime, timedelta
>>> now = datetime(2026, 1, 1, 12, tzinfo=UTC)
>>> timing(None, now + timedelta(hours=1), now).kind, timing(now, now, now).kind
('now', 'expired')
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from email.utils import parsedate_to_datetime
from enum import StrEnum
from typing import Literal


@dataclass(frozen=True, slots=True)
class Timing:
    #: now: send it; hold: keep it until ``until``; expired: never send it
    kind: Literal["now", "hold", "expired"]
    until: datetime | None = None


def timing(not_before: datetime | None, expires_at: datetime, now: datetime) -> Timing:
    """An action is never sent at or after its ``expires_at``, nor before its ``not_before``.

    >>> from datetime import UTC, datetime, timedelta
    >>> t0 = datetime(2026, 1, 1, tzinfo=UTC)
    >>> timing(t0 + timedelta(hours=8), t0 + timedelta(hours=9), t0)
    Timing(kind='hold', until=datetime.datetime(2026, 1, 1, 8, 0, tzinfo=datetime.timezone.utc))
    >>> timing(t0 + timedelta(hours=9), t0 + timedelta(hours=8), t0).kind  # act-by first
    'expired'
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    if now >= expires_at or (not_before is not None and not_before >= expires_at):
        return Timing("expired")
    if not_before is not None and now < not_before:
        return Timing("hold", not_before)
    return Timing("now")


class Verdict(StrEnum):
    delivered = "delivered"
    #: worth another attempt (5xx, 408, 429, timeouts, connection errors)
    retry = "retry"
    #: the destination refused it for good (other 4xx, a body that cannot be rendered)
    rejected = "rejected"


def verdict(status: int | None) -> Verdict:
    """An attempt's result from its HTTP status; None: no answer (timeout, connection).

    >>> [verdict(s).value for s in (200, 204, 301, 400, 408, 429, 503, None)]
    ['delivered', 'delivered', 'rejected', 'rejected', 'retry', 'retry', 'retry', 'retry']
    """
    if status is None or status >= 500 or status in (408, 429):
        return Verdict.retry
    if 200 <= status < 300:
        return Verdict.delivered
    return Verdict.rejected


def retry_after(value: str | None, now: datetime) -> float | None:
    """Seconds a ``Retry-After`` header asks for (delta-seconds or an HTTP date); None when
    absent or unreadable.

    >>> from datetime import UTC, datetime
    >>> now = datetime(2026, 1, 1, tzinfo=UTC)
    >>> retry_after("2", now), retry_after("Thu, 01 Jan 2026 00:00:30 GMT", now), retry_after("x", now)
    (2.0, 30.0, None)
    """  # noqa: E501
    if value is None:
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, (when - now).total_seconds())


def backoff(
    attempt: int,
    base: float,
    cap: float,
    random: Callable[[], float],
    asked: float | None = None,
    asked_cap: float = 3600.0,
) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1 = the first): full jitter
    over an exponential ceiling (``random()`` in [0, 1)), never under half of it; a
    ``Retry-After`` (``asked``, cut to ``asked_cap``) is honoured when it asks for longer.

    >>> backoff(1, 1.0, 300.0, lambda: 0.0), backoff(3, 1.0, 300.0, lambda: 0.999)
    (0.5, 3.998)
    >>> backoff(20, 1.0, 300.0, lambda: 0.0), backoff(1, 1.0, 300.0, lambda: 0.0, asked=7)
    (150.0, 7.0)
    """
    ceiling = min(cap, base * math.pow(2.0, max(0, attempt - 1)))
    wait = ceiling * (0.5 + 0.5 * random())
    if asked is not None:
        wait = max(wait, float(min(asked, asked_cap)))
    return round(wait, 6)


class BreakerState(StrEnum):
    closed = "closed"
    #: paused: no requests until the cool-down has passed
    open = "open"
    #: one trial request is out; its result closes or reopens the breaker
    half_open = "half_open"


class CircuitBreaker:
    """Pauses one destination after ``failures`` consecutive failed attempts; after
    ``cooldown`` one trial request goes out, whose success closes it again.

    >>> from datetime import UTC, datetime, timedelta
    >>> t = [datetime(2026, 1, 1, tzinfo=UTC)]
    >>> b = CircuitBreaker(2, timedelta(seconds=30), lambda: t[0])
    >>> b.record(False); b.record(False); b.state.value, b.allow()
    ('open', False)
    >>> t[0] += timedelta(seconds=30); b.allow(), b.state.value, b.allow()
    (True, 'half_open', False)
    >>> b.record(True); b.state.value
    'closed'
    """

    def __init__(self, failures: int, cooldown: timedelta, clock: Callable[[], datetime]) -> None:
        self.failures = failures
        self.cooldown = cooldown
        self.clock = clock
        self.state = BreakerState.closed
        self.consecutive = 0
        self.opened_at: datetime | None = None

    def allow(self) -> bool:
        """Whether a request may go out now (in half-open: only the one trial)."""
        if self.state is BreakerState.closed:
            return True
        if (
            self.state is BreakerState.open
            and self.opened_at is not None
            and self.clock() >= self.opened_at + self.cooldown
        ):
            self.state = BreakerState.half_open
            return True
        return False

    def resumes_at(self) -> datetime:
        """When a paused destination's next request may go (now when it is closed)."""
        if self.state is BreakerState.open and self.opened_at is not None:
            return self.opened_at + self.cooldown
        return self.clock()

    def record(self, success: bool) -> None:
        """An attempt's result (a rejected request counts as the destination answering)."""
        if success:
            self.state = BreakerState.closed
            self.consecutive = 0
            self.opened_at = None
            return
        self.consecutive += 1
        if self.state is BreakerState.half_open or self.consecutive >= self.failures:
            self.state = BreakerState.open
            self.opened_at = self.clock()
