"""A volume target: act on the riskiest moments, at most N actions per 1,000 active customers
per day, whatever the traffic does.

A fixed threshold sends a volume that follows the traffic and the score's distribution: on a
clickstream three times busier than the one it was set on, it sent 1.5-3x the intended
volume (issue 11). ``AdaptiveThreshold`` instead keeps, per rule and partition, the
threshold that the recent moments say will produce the target:

- every moment the rule could act on is *observed* with its score; its weight grows with
  stream time (forward decay: ``exp(t / lifetime)``), so recent moments count more and no
  per-event sweep over old ones is needed;
- customers becoming active (their first event in a day) and the actions actually sent are
  counted the same way, so the target (N per 1,000 active customers per day) and the realised
  volume follow the traffic;
- on a stream-time grid (``every_seconds``) the threshold is recomputed: the score above which
  the target's share of the recent moments lies, corrected by how far the realised volume
  missed the target (the policies after the threshold, such as cooldowns and the contact
  budget, stop some of what passes it).

Everything depends on the events in order and on their times, never on the wall clock or on
where batches are cut, so a replay decides what the live run decided; ``to_record`` /
``from_record`` carry it across restarts.

>>> t = AdaptiveThreshold(VolumeTarget(per_1000_active_per_day=10, warm_up_seconds=3600),
...                       start=0.0)
>>> for i in range(5_000):                       # a day of moments, scores 0.0 to 0.9999
...     at = i * 86_400 / 5_000
...     t.customer_active(at)
...     if t.observe(at, (i * 7919 % 10_000) / 10_000):
...         t.sent(at)                           # no policy stopped it
>>> round(t.threshold, 2)                       # 50 actions a day of 5,000 moments: top 1%
0.99
"""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

#: score resolution: thresholds are found to within one bin of [low, high]
BINS = 1_000
#: the share the policies let through is measured once this many pass a day
MIN_PASSED_PER_DAY = 20.0
#: at most this many moments pass the threshold for each action sent
MAX_CORRECTION = 20.0
_RECORD_VERSION = 1


class VolumeTarget(BaseModel):
    """What a rule (or the whole rulebook) may send: a volume, not a fixed threshold."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    per_1000_active_per_day: float = Field(gt=0)
    #: the range of the score the threshold is set on (0-1 for risks, 0-100 for friction)
    low: float = 0.0
    high: float = 1.0
    #: how long a moment keeps counting (mean lifetime of its weight, in stream time)
    lifetime_seconds: float = Field(default=86_400.0, gt=0)
    #: how often, in stream time, the threshold is recomputed
    every_seconds: float = Field(default=300.0, gt=0)
    #: nothing passes until this much stream time has been seen
    warm_up_seconds: float = Field(default=86_400.0, ge=0)
    #: the threshold is also held to the target's share of this recent a window, so that
    #: scores that shift all at once (an incident) do not send a day's volume in an hour
    guard_seconds: float = Field(default=3_600.0, gt=0)


class AdaptiveThreshold:
    """One rule's threshold on one partition (module docstring)."""

    def __init__(self, target: VolumeTarget, start: float) -> None:
        self.target = target
        #: the stream time weights are relative to (rebased now and then to stay finite)
        self._origin = start
        self._start = start
        self._scores = [0.0] * BINS
        self._moments = 0.0
        #: the same over the guard's short window (weights with its own lifetime)
        self._recent = [0.0] * BINS
        self._recent_moments = 0.0
        self._active = 0.0
        self._sent = 0.0
        #: moments that reached the threshold (``sent`` is what the policies let through)
        self._passed = 0.0
        #: moments passing the threshold per action sent (the policies stop the rest)
        self.correction = 1.0
        self.threshold = target.high
        #: False until the warm-up has passed: nothing reaches the threshold before
        self.warm = False
        self._next_update = start + target.every_seconds
        self._last = start

    # -- what the stream tells it --

    def customer_active(self, at: float) -> None:
        """A customer's first event in a day (of stream time)."""
        self._advance(at)
        self._active += self._weight(at)

    def observe(self, at: float, score: float) -> bool:
        """A moment the rule could act on; True when its score reaches the threshold."""
        self._advance(at)
        w = self._weight(at)
        b = self._bin(score)
        self._scores[b] += w
        self._moments += w
        r = math.exp((at - self._origin) / self.target.guard_seconds)
        self._recent[b] += r
        self._recent_moments += r
        if self.warm and score >= self.threshold:
            self._passed += w
            return True
        return False

    def sent(self, at: float) -> None:
        """An action of this rule went out (after every policy)."""
        self._advance(at)
        self._sent += self._weight(at)

    # -- what it says --

    def per_day(self) -> tuple[float, float, float]:
        """Recent moments, newly active customers and actions, each per day of stream time."""
        scale = self._per_day_scale()
        return self._moments * scale, self._active * scale, self._sent * scale

    def _per_day_scale(self) -> float:
        # a steady rate r sums to r * lifetime * weight(now): this turns sums into rates
        return 86_400 / self.target.lifetime_seconds / self._weight(self._last)

    def target_per_day(self) -> float:
        return self.per_day()[1] * self.target.per_1000_active_per_day / 1000

    def top_share(self) -> float:
        """The share of recent moments at or above the threshold (for an action's reasons)."""
        above = sum(self._scores[self._bin(self.threshold) :])
        return above / self._moments if self._moments > 0 else 0.0

    # -- inside --

    def _weight(self, at: float) -> float:
        return math.exp((at - self._origin) / self.target.lifetime_seconds)

    def _bin(self, score: float) -> int:
        t = self.target
        x = (score - t.low) / (t.high - t.low)
        return min(BINS - 1, max(0, int(x * BINS)))

    def _advance(self, at: float) -> None:
        """Move stream time to ``at`` (never back), recomputing on each grid point passed."""
        if at <= self._last:
            return
        self._last = at
        if at >= self._next_update:
            every = self.target.every_seconds
            self._next_update = (at // every + 1) * every
            self._update()
        t = self.target
        if at - self._origin > 50 * min(t.lifetime_seconds, t.guard_seconds):  # exp() finite
            self._rebase(at)

    def _update(self) -> None:
        t = self.target
        if self._last - self._start < t.warm_up_seconds or self._moments <= 0:
            return
        self.warm = True
        scale = self._per_day_scale()
        moments = self._moments * scale
        want = self.target_per_day()
        if self._passed * scale >= MIN_PASSED_PER_DAY:
            # Policies after the threshold (cooldowns, the contact budget, consent) stop a
            # share of what passes it: measured over the same window, so no controller
            # winds up while the realised volume catches up.
            self.correction = min(MAX_CORRECTION, max(1.0, self._passed / max(self._sent, 1e-300)))
        share = min(1.0, want / moments * self.correction)
        day = self._top(self._scores, share * self._moments)
        hour = self._top(self._recent, share * self._recent_moments)
        self.threshold = max(day, hour)

    def _top(self, counts: list[float], need: float) -> float:
        """The lowest threshold with at most ``need`` of ``counts`` at or above it."""
        t = self.target
        acc = 0.0
        for i in range(BINS - 1, -1, -1):
            acc += counts[i]
            if acc > need:
                return t.low + (t.high - t.low) * (i + 1) / BINS
        return t.low

    def _rebase(self, at: float) -> None:
        f = math.exp(-(at - self._origin) / self.target.lifetime_seconds)
        self._scores = [c * f for c in self._scores]
        self._moments *= f
        g = math.exp(-(at - self._origin) / self.target.guard_seconds)
        self._recent = [c * g for c in self._recent]
        self._recent_moments *= g
        self._active *= f
        self._sent *= f
        self._passed *= f
        self._origin = at

    # -- across restarts --

    def to_record(self) -> dict[str, Any]:
        """Plain data (MessagePack- and JSON-friendly) that ``from_record`` restores exactly."""
        return {
            "v": _RECORD_VERSION,
            "origin": self._origin,
            "start": self._start,
            "scores": list(self._scores),
            "moments": self._moments,
            "recent": list(self._recent),
            "recent_moments": self._recent_moments,
            "active": self._active,
            "sent": self._sent,
            "passed": self._passed,
            "correction": self.correction,
            "threshold": self.threshold,
            "warm": self.warm,
            "next_update": self._next_update,
            "last": self._last,
        }

    @classmethod
    def from_record(cls, target: VolumeTarget, record: dict[str, Any]) -> AdaptiveThreshold:
        if record.get("v") != _RECORD_VERSION or len(record["scores"]) != BINS:
            raise ValueError(f"not a volume record of version {_RECORD_VERSION}")
        t = cls(target, start=float(record["start"]))
        t._origin = float(record["origin"])
        t._scores = [float(c) for c in record["scores"]]
        t._moments = float(record["moments"])
        t._recent = [float(c) for c in record["recent"]]
        t._recent_moments = float(record["recent_moments"])
        t._active = float(record["active"])
        t._sent = float(record["sent"])
        t._passed = float(record["passed"])
        t.correction = float(record["correction"])
        t.threshold = float(record["threshold"])
        t.warm = bool(record["warm"])
        t._next_update = float(record["next_update"])
        t._last = float(record["last"])
        return t
