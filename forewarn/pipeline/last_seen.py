"""Which customers a store last saw in which hour: the expiry sweep reads what expires.

An idle customer's activity is forgotten after ``FOREWARN_IDLE_TTL_DAYS`` (the engine sweeps
once an hour of stream time). Walking the whole partition for it cost every sweep a read of
every customer, and decoded every restored record the restore had kept as bytes. The index
files each customer under the hour of stream time it was last seen in, so a sweep reads only
the hours that fell behind the cutoff.

It holds committed state only and never decides alone: each entry is checked against the
store's own last-seen time (``last_seen_of``) when a sweep reads it. An entry left behind by
a customer seen again later, deleted, or expired is dropped then, so an aborted batch
cannot leave the index wrong.

>>> index = LastSeenIndex()
>>> index.file("ann", 100.0); index.file("bob", 7_300.0); index.file("ann", 7_400.0)
>>> held = {"ann": 7_400.0, "bob": 7_300.0}                 # what the store says
>>> index.seen_before(7_350.0, held.get, held.items)        # ann's first entry is stale
['bob']
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

#: the width of an hour of the index (seconds of stream time)
HOUR_SECONDS = 3600.0


class LastSeenIndex:
    """Customers by the hour they were last seen in (module docstring)."""

    def __init__(self) -> None:
        #: each hour's customers as a list (8 bytes an entry, where a set took ~40: the
        #: memory store's budget is 2 KiB a customer); a customer written in several
        #: batches of an hour is listed again, and the list is de-duplicated each time it
        #: doubles, which keeps the cost of that linear in the writes
        self._hours: dict[int, list[str]] = {}
        self._distinct: dict[int, int] = {}
        #: customers the store holds but the index has not filed (restored records, whose
        #: time is read at the next sweep); None: every customer the store holds (a store
        #: opened from disk)
        self._unfiled: list[str] | None = []

    def file(self, customer_id: str, last_seen: float) -> None:
        """A committed write: the customer was last seen at ``last_seen`` (-inf: never, a
        profile alone, which never expires)."""
        if last_seen <= -math.inf:
            return
        hour = int(last_seen // HOUR_SECONDS)
        filed = self._hours.get(hour)
        if filed is None:
            self._hours[hour] = [customer_id]
            self._distinct[hour] = 1
            return
        filed.append(customer_id)
        if len(filed) > 2 * max(self._distinct[hour], 8):
            filed[:] = dict.fromkeys(filed)
            self._distinct[hour] = len(filed)

    def restored(self, customer_id: str) -> None:
        """The store took a record as bytes: its time is read at the next sweep."""
        if self._unfiled is not None:
            self._unfiled.append(customer_id)

    def unfiled_all(self) -> None:
        """The store holds customers the index never saw (opened from disk)."""
        self._unfiled = None

    def clear(self) -> None:
        self._hours.clear()
        self._distinct.clear()
        self._unfiled = []

    def seen_before(
        self,
        cutoff: float,
        last_seen_of: Callable[[str], float | None],
        every: Callable[[], Iterable[tuple[str, float | None]]],
    ) -> list[str]:
        """The stored customers last seen before ``cutoff``, in id order. ``last_seen_of``:
        the store's time for a customer (None: not held, or unreadable; -inf: never seen);
        ``every``: each customer the store holds with its time (read only when
        ``unfiled_all`` said so)."""
        if self._unfiled is None:
            unfiled = every()
        else:
            unfiled = ((cid, last_seen_of(cid)) for cid in self._unfiled)
        for cid, t in unfiled:
            if t is not None:
                self.file(cid, t)
        self._unfiled = []
        last = int(cutoff // HOUR_SECONDS)  # every hour before it lies wholly before cutoff
        found: list[str] = []
        for hour in sorted(h for h in self._hours if h <= last):
            current = []
            for cid in dict.fromkeys(self._hours[hour]):
                t = last_seen_of(cid)
                if t is not None and t > -math.inf and int(t // HOUR_SECONDS) == hour:
                    current.append(cid)
                    if t < cutoff:
                        found.append(cid)
            # The customers found stay filed until a sweep sees them gone or changed: the
            # batch that expires them may yet abort.
            if current:
                self._hours[hour] = current
                self._distinct[hour] = len(current)
            else:
                del self._hours[hour], self._distinct[hour]
        return sorted(found)

    def __len__(self) -> int:
        """Entries filed (a customer filed again, or under an earlier hour, counts again)."""
        return sum(len(s) for s in self._hours.values())
