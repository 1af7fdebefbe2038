"""A volume target: act on the riskiest moments, at most N actions per 1,000 active customers
per day, whatever the traffic does.

A fixed threshold sends a volume that follows the traffic and the score's distribution: on a
clickstream three times busier than the one it was set on, it sent 1.5-3x the intended
volume (issue 11). ``AdaptiveThreshold`` instead keeps, per rule and partition, the
threshold that the recent moments say will produce the target:

- every moment the rule could act on is *observed* with its score; its weight grows with
  stream time (forward decay: ``exp(t / lifetime)``), so recent moments count more and no
  per-event sweep over old ones is needed;
- the actions actually sent are counted the same way, so the realised volume follows the
  traffic;
- customers becoming active (their first event of a day, midnight UTC) and the moments are
  also counted by the hour: today is expected to hold those seen so far today plus those
  that came after this time of day yesterday (yesterday's count at midnight, today's at the
  day's end). The target is N per 1,000 of the expected customers and its share of the
  moments is the ratio of the two expectations, so neither lags the other; without
  yesterday's counts (the first day, after an upgrade, after a day with hardly a moment)
  the decayed counts serve. Decayed counts alone missed a day that comes in waves or a
  growing world by up to a quarter either way (docs/decisions.md §32);
- on a stream-time grid (``every_seconds``) the threshold is recomputed: the score above which
  the target's share of the recent moments lies, corrected by how far the realised volume
  missed the target (the policies after the threshold, such as cooldowns and the contact
  budget, stop some of what passes it);
- the share is also held to a one-hour window (``guard_seconds``): no more than
  ``GUARD_FACTOR`` times it passes there (scores that shift all at once), and, once the hour
  holds enough moments, no less than 1 / ``GUARD_FLOOR_FACTOR`` of it (scores that shift back);
- and it is paced over the day (stream days from midnight UTC): the actions sent so far today
  against those due so far (the target's share of each moment seen today), the difference
  spread over the rest of the day, within ``PACE_LOW``-``PACE_HIGH``. The histograms lag a
  shift of the scores by hours; the pace holds each day to its budget. It is recomputed from
  today's counts, not integrated, and starts afresh each day, so it cannot wind up;
- and a day stops at ``DAY_CAP`` times its target: "at most N a day" holds even when the
  moments themselves surge, which the pace, counting what is due by the moments, does not
  see.

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

from forewarn.models.state import stable_fraction
from forewarn.rules.day_counts import DAY_SECONDS, DayByHour

#: score resolution: thresholds are found to within one bin of [low, high]
BINS = 1_000
#: the share the policies let through is measured once this many pass a day
MIN_PASSED_PER_DAY = 5.0
#: at most this many moments pass the threshold for each action sent
MAX_CORRECTION = 20.0
#: the short window may pass this many times the target's share before it binds
GUARD_FACTOR = 2.0
#: nor may the threshold stay stricter than passing 1 / this of the share over the short
#: window (once the high scores of an ended incident fill the day window, nothing reached a
#: day threshold for 2-3 days)...
GUARD_FLOOR_FACTOR = 1.25
#: ... when the short window holds at least this many such moments (effective count): an hour
#: of a small rule holds none most of the time, and would loosen the threshold at random
GUARD_FLOOR_MIN_MOMENTS = 8.0
#: the pace spreads what is left of today's budget over at least this share of a day
PACE_MIN_LEFT = 0.1
#: and scales the share by at least / at most these factors
PACE_LOW = 0.25
PACE_HIGH = 2.0
#: a day's actions stop at this share of its target: the pace counts what is due by the
#: day's moments, and when the moments themselves surge (an incident: errors everywhere)
#: it sent 1.75x on the first day and 1.5x on the next
DAY_CAP = 1.15
#: a day whose counts began within this much of its midnight counts as seen whole: its
#: active customers by the hour are the shape of the next day's
WHOLE_DAY_SLACK = 3_600.0
#: and it needs this many of the rule's moments for that shape (one an hour on average);
#: a sparser rule keeps the decayed counts
MIN_MOMENTS_YESTERDAY = 24
_RECORD_VERSION = 3
#: records of version 1 (no pace yet) restore with today's pace afresh; of versions 1 and 2
#: (no active customers by the hour), with the decayed count until a day is seen whole
_READABLE_VERSIONS = (1, 2, 3)


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
    #: nothing passes until the rule's moments have been seen for this much stream time (from
    #: its first one: a score that appears later, a model's first version, warms up then)
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
        #: stream time of the first moment (the warm-up counts from it)
        self._first: float | None = None
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
        #: the threshold's bin, and the share of moments in it that pass: scores tie (a
        #: friction score sits on a few plateaus), so a whole bin is often too much and the
        #: next one too little; which moments of the bin pass is decided by ``tiebreak``
        self._edge = (BINS, 0.0)
        #: False until the warm-up has passed: nothing reaches the threshold before
        self.warm = False
        self._next_update = start + target.every_seconds
        self._last = start
        #: today's pace (stream days from midnight UTC): the actions due so far today (the
        #: target's share of each moment observed while warm), those sent, and the factor
        #: on the share that spreads the rest of the day's budget over what is left of it
        self._day = math.floor(start / DAY_SECONDS)
        self._due = 0.0
        self._day_sent = 0.0
        self._due_share = 0.0
        self.pace = 1.0
        #: today's active customers (first event of the day) and moments, by the hour, and
        #: yesterday's when it was seen whole (``WHOLE_DAY_SLACK``)
        self._day_active = 0.0
        self._active_hours = DayByHour()
        self._moment_hours = DayByHour()
        #: when the counts by the hour began (a restored record of version 1 or 2 had none)
        self._hours_from = start
        #: without yesterday's counts (the first day, after an upgrade), the active customers
        #: expected at the day's first recompute from the decayed count (it swings within a
        #: day, so it is not followed), or those seen so far today if more
        self._expected_active = math.inf
        self._expected_day: int | None = None
        #: the stream time the counts began at: decayed sums show a steady rate in full only
        #: after a few lifetimes (63% after one), which the cap, an absolute count, corrects
        self._began = start

    # -- what the stream tells it --

    def customer_active(self, at: float) -> None:
        """A customer's first event of a day (stream days from midnight UTC), at its event
        time: a late one of a day already over counts toward no day's target."""
        self._advance(at)
        self._active += self._weight(at)
        if math.floor(at / DAY_SECONDS) == self._day:
            self._day_active += 1.0
            self._active_hours.add(at)

    def observe(self, at: float, score: float, tiebreak: float = 0.0) -> bool:
        """A moment the rule could act on; True when its score reaches the threshold.
        ``tiebreak`` in [0, 1) (``tiebreak(event_id)``) settles which moments of the
        threshold's own bin pass."""
        self._advance(at)
        if self._first is None:
            self._first = at
        w = self._weight(at)
        b = self._bin(score)
        edge, share = self._edge
        passes = b > edge or (b == edge and tiebreak < share)
        self._scores[b] += w
        self._moments += w
        if math.floor(at / DAY_SECONDS) == self._day:
            self._moment_hours.add(at)
        r = math.exp((at - self._origin) / self.target.guard_seconds)
        self._recent[b] += r
        self._recent_moments += r
        if self.warm:
            self._due += self._due_share
            if passes and self._day_sent < self.day_cap():
                self._passed += w
                return True
        return False

    def sent(self, at: float) -> None:
        """An action of this rule went out (after every policy)."""
        self._advance(at)
        self._sent += self._weight(at)
        if self.warm:
            self._day_sent += 1.0

    # -- what it says --

    def per_day(self) -> tuple[float, float, float]:
        """Recent moments, newly active customers and actions, each per day of stream time."""
        scale = self._per_day_scale()
        return self._moments * scale, self._active * scale, self._sent * scale

    def _per_day_scale(self) -> float:
        # a steady rate r sums to r * lifetime * weight(now): this turns sums into rates
        return 86_400 / self.target.lifetime_seconds / self._weight(self._last)

    def _today(self) -> tuple[float, float] | None:
        """The customers expected to be active today and the moments expected today, from
        the counts by the hour (None without yesterday's, or when yesterday held too few
        moments to say how today's will come: after a silent day the morning's first
        moments alone would be "all of today's", and any score would pass)."""
        came = self._moment_hours.yesterday
        if came is None or sum(came) < MIN_MOMENTS_YESTERDAY:
            return None
        into = self._last - self._day * DAY_SECONDS
        active, moments = self._active_hours.expected(into), self._moment_hours.expected(into)
        return None if active is None or moments is None else (active, moments)

    def target_per_day(self) -> float:
        """Today's target: N per 1,000 of the customers expected to be active today
        (without yesterday's counts, the decayed count of them)."""
        today = self._today()
        active = self.per_day()[1] if today is None else today[0]
        return active * self.target.per_1000_active_per_day / 1000

    def day_cap(self) -> float:
        """The most today may send: ``DAY_CAP`` of the target for yesterday's active
        customers, or today's so far if more. Not for those expected: when customers come
        earlier in the day than yesterday (more events each), the expectation runs ahead
        until the evening, and what it let through cannot be taken back. (Without
        yesterday's counts: for those the decayed count expected at the day's first
        recompute.)"""
        came = self._active_hours.yesterday
        expected = self._expected_active if came is None else sum(came)
        active = max(expected, self._day_active)
        return DAY_CAP * active * self.target.per_1000_active_per_day / 1000

    def top_share(self) -> float:
        """The share of recent moments at or above the threshold (for an action's reasons)."""
        edge, share = self._edge
        if self._moments <= 0 or edge >= BINS:
            return 0.0
        above = sum(self._scores[edge + 1 :]) + share * self._scores[edge]
        return above / self._moments

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
        t = self.target
        # Rebase first: after a long silence exp() of the gap would overflow (a 1 h window
        # overflows after 30 days); what is that old weighs nothing and falls to zero.
        if at - self._origin > 50 * min(t.lifetime_seconds, t.guard_seconds):
            self._rebase(at)
        day = math.floor(at / DAY_SECONDS)
        if day != self._day:  # a new day: its budget starts afresh, nothing carries over
            whole = self._hours_from <= self._day * DAY_SECONDS + WHOLE_DAY_SLACK
            for hours in (self._active_hours, self._moment_hours):
                hours.roll(whole, day - self._day)
            self._day, self._due, self._day_sent, self.pace = day, 0.0, 0.0, 1.0
            self._day_active = 0.0
        if at >= self._next_update:
            every = t.every_seconds
            self._next_update = (at // every + 1) * every
            self._update()

    def _update(self) -> None:
        t = self.target
        if self._first is None or self._last - self._first < t.warm_up_seconds:
            return
        if self._moments <= 0:  # everything decayed away (a long silence): nothing to rank
            return
        self.warm = True
        if self._expected_day != self._day:
            begun = -math.expm1(-(self._last - self._began) / t.lifetime_seconds)
            self._expected_active = self.per_day()[1] / max(begun, 1e-9)
            self._expected_day = self._day
        scale = self._per_day_scale()
        # The target's share of the moments: today's expected active customers and moments
        # (counted the same way, so growth lags neither), or the decayed counts of both
        today = self._today()
        active, moments = (self.per_day()[1], self._moments * scale) if today is None else today
        want = active * t.per_1000_active_per_day / 1000
        if self._passed * scale >= MIN_PASSED_PER_DAY:
            # Policies after the threshold (cooldowns, the contact budget, consent) stop a
            # share of what passes it: measured over the same window, so no controller
            # winds up while the realised volume catches up.
            self.correction = min(MAX_CORRECTION, max(1.0, self._passed / max(self._sent, 1e-300)))
        # The pace: today's actions so far against those due so far (the target's share of
        # each moment seen today), the difference spread over the rest of the day. The
        # histograms lag a shift of the scores by hours (an incident's first day sent 2.2x);
        # the pace holds the day to its budget. It is recomputed from today's counts, never
        # integrated, and starts afresh each day, so it cannot wind up.
        self._due_share = min(1.0, want / max(moments, 1e-300))
        left = max(PACE_MIN_LEFT, self._day + 1 - self._last / DAY_SECONDS)
        ahead = (self._day_sent - self._due) / max(want * left, 1e-300)
        self.pace = min(PACE_HIGH, max(PACE_LOW, 1.0 - ahead))
        share = min(1.0, self._due_share * self.correction * self.pace)
        day = self._top(self._scores, share * self._moments)
        # The guard binds only beyond GUARD_FACTOR times the share: an hour holds few of the
        # riskiest moments, often from the same few customers, and a strict hourly quantile
        # held the volume a third under its target.
        hour = self._top(self._recent, min(1.0, GUARD_FACTOR * share) * self._recent_moments)
        # the stricter: a higher bin, or less of the same one
        edge = max(day, hour, key=_strictness)
        # and no stricter than passing 1 / GUARD_FLOOR_FACTOR of the share over the short
        # window, once it holds enough moments to tell (2 * sum / weight(now) is the window's
        # effective count of moments)
        floor_share = share / GUARD_FLOOR_FACTOR
        now = math.exp((self._last - self._origin) / t.guard_seconds)
        if floor_share * 2 * self._recent_moments / now >= GUARD_FLOOR_MIN_MOMENTS:
            floor = self._top(self._recent, floor_share * self._recent_moments)
            edge = min(edge, floor, key=_strictness)
        self._edge = edge
        self.threshold = t.low + (t.high - t.low) * self._edge[0] / BINS

    @staticmethod
    def _top(counts: list[float], need: float) -> tuple[int, float]:
        """(bin, share): every bin above passes, and that share of this one, so that
        ``need`` of ``counts`` pass."""
        acc = 0.0
        for i in range(BINS - 1, -1, -1):
            if acc + counts[i] >= need:
                return i, (need - acc) / counts[i] if counts[i] > 0 else 0.0
            acc += counts[i]
        return 0, 1.0

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
            "target": self.target.model_dump(),
            "origin": self._origin,
            "start": self._first,
            "scores": list(self._scores),
            "moments": self._moments,
            "recent": list(self._recent),
            "recent_moments": self._recent_moments,
            "active": self._active,
            "sent": self._sent,
            "passed": self._passed,
            "correction": self.correction,
            "threshold": self.threshold,
            "edge": [self._edge[0], self._edge[1]],
            "warm": self.warm,
            "next_update": self._next_update,
            "last": self._last,
            "day": self._day,
            "due": self._due,
            "day_sent": self._day_sent,
            "due_share": self._due_share,
            "pace": self.pace,
            "expected_active": None if self._expected_active == math.inf else self._expected_active,
            "day_active": self._day_active,
            "began": self._began,
            "expected_day": self._expected_day,
            "active_hours": self._active_hours.to_record(),
            "moment_hours": self._moment_hours.to_record(),
            "hours_from": self._hours_from,
        }

    @classmethod
    def from_record(cls, target: VolumeTarget, record: dict[str, Any]) -> AdaptiveThreshold:
        if record.get("v") not in _READABLE_VERSIONS or len(record["scores"]) != BINS:
            raise ValueError(f"not a volume record of version {_READABLE_VERSIONS}")
        t = cls(target, start=float(record["origin"]))
        t._first = None if record["start"] is None else float(record["start"])
        t._scores = [float(c) for c in record["scores"]]
        t._moments = float(record["moments"])
        t._recent = [float(c) for c in record["recent"]]
        t._recent_moments = float(record["recent_moments"])
        t._active = float(record["active"])
        t._sent = float(record["sent"])
        t._passed = float(record["passed"])
        t.correction = float(record["correction"])
        t.threshold = float(record["threshold"])
        t._edge = (int(record["edge"][0]), float(record["edge"][1]))
        t.warm = bool(record["warm"])
        t._next_update = float(record["next_update"])
        t._last = float(record["last"])
        # no counts by the hour before version 3: they begin now, and the decayed count
        # serves until a day has been seen whole
        t._hours_from = t._last
        if record["v"] == 1:  # today's pace afresh: from now on, as after a warm-up mid-day
            t._day = math.floor(t._last / DAY_SECONDS)
            t._began = t._last - 50 * target.lifetime_seconds  # its counts have long run
            return t
        t._day = int(record["day"])
        t._due = float(record["due"])
        t._day_sent = float(record["day_sent"])
        t._due_share = float(record["due_share"])
        t.pace = float(record["pace"])
        expected = record["expected_active"]
        t._expected_active = math.inf if expected is None else float(expected)
        t._day_active = float(record["day_active"])
        t._began = float(record["began"])
        t._expected_day = None if record["expected_day"] is None else int(record["expected_day"])
        if record["v"] >= 3:
            t._active_hours = DayByHour.from_record(record["active_hours"])
            t._moment_hours = DayByHour.from_record(record["moment_hours"])
            t._hours_from = float(record["hours_from"])
        return t


def _strictness(edge: tuple[int, float]) -> tuple[int, float]:
    """Orders thresholds (bin, share passing in it): a higher bin, or less of the same one."""
    return edge[0], -edge[1]


def tiebreak(event_id: str) -> float:
    """A number in [0, 1) fixed by the event id: the same in every replay."""
    return stable_fraction(event_id)
