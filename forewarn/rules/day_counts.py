"""A day's counts by the hour of stream time (days from midnight UTC), for what a day is
expected to hold before it is over: a volume target's active customers and moments."""

from __future__ import annotations

from typing import Any

#: the day a volume is paced over: stream days from midnight UTC
DAY_SECONDS = 86_400.0


class DayByHour:
    """A day's counts by the hour, and yesterday's when it was seen whole: what today is
    expected to hold is what came so far plus what came after this time of day yesterday
    (yesterday's count at midnight, today's at the day's end).

    >>> d = DayByHour()
    >>> d.add(2 * 3600.0); d.add(14 * 3600.0); d.add(15 * 3600.0)
    >>> d.roll(whole=True, days=1)
    >>> d.add(DAY_SECONDS + 3 * 3600.0)
    >>> d.expected(into=10 * 3600.0)            # 1 so far, and 2 came after 10:00 yesterday
    3.0
    """

    __slots__ = ("today", "yesterday")

    # whole numbers: a record carries them in a byte or three each, not nine
    def __init__(self) -> None:
        self.today = [0] * 24
        self.yesterday: list[int] | None = None

    def add(self, at: float) -> None:
        self.today[min(23, int(at % DAY_SECONDS // 3600))] += 1

    def roll(self, whole: bool, days: int) -> None:
        """A new day, ``days`` after the last (more than one: yesterday had nothing);
        ``whole``: the day that ends was counted from its start."""
        self.yesterday = None if not whole else self.today if days == 1 else [0] * 24
        self.today = [0] * 24

    def expected(self, into: float) -> float | None:
        """What today is expected to hold, ``into`` seconds after its midnight."""
        came = self.yesterday
        if came is None:
            return None
        hour = min(23, max(0, int(into // 3600)))
        to_come = sum(came[hour + 1 :]) + came[hour] * (1 - (into - hour * 3600) / 3600)
        return float(sum(self.today)) + max(0.0, to_come)

    def to_record(self) -> dict[str, Any]:
        return {"today": list(self.today), "yesterday": self.yesterday and list(self.yesterday)}

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> DayByHour:
        d = cls()
        d.today = [int(c) for c in record["today"]]
        came = record["yesterday"]
        d.yesterday = None if came is None else [int(c) for c in came]
        if len(d.today) != 24 or (d.yesterday is not None and len(d.yesterday) != 24):
            raise ValueError("a day's counts by the hour are 24 numbers")
        return d
