"""Noticing a worker that the consumer group has left behind.

A worker with no partitions is normal when the group has more workers than partitions (a
spare). It is a fault when records wait and nobody reads them: seen after a broker came back
empty and the topics were created again only after the worker had rejoined. The group then
handed out an empty assignment built on metadata in which the topics did not exist, and never
looked again: ``/readyz`` said ``"assigned": []`` for more than eight minutes while
``/healthz`` said all was well.

So a worker without partitions watches the group's progress on journey-events every
``bound`` seconds: if records wait beyond the group's committed offsets and those offsets have
not moved for a whole ``bound``, nobody is reading them. The worker then leaves and rejoins the
group (once); if that does not help within another ``bound`` either, liveness fails so that
the orchestrator restarts the process. A spare in a working group sees the offsets move (or
nothing waiting) and does nothing: it never makes the group rebalance.

>>> clock = [0.0]
>>> w = AssignmentWatch(30, monotonic=lambda: clock[0])
>>> w.lost(); clock[0] = 31; w.due()
True
>>> stuck = GroupProgress(committed=(-1, -1), waiting=True)
>>> w.observe(stuck), w.observe(stuck)  # a baseline first, then the same a bound later
('wait', 'wait')
>>> clock[0] = 62; w.observe(stuck)
'rejoin'
>>> clock[0] = 93; w.observe(stuck)
'fail'
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

Verdict = Literal["wait", "rejoin", "fail"]


@dataclass(frozen=True, slots=True)
class GroupProgress:
    """The group's committed offset per journey-events partition, and whether records wait
    beyond them."""

    committed: tuple[int, ...]
    waiting: bool


class AssignmentWatch:
    def __init__(self, bound: float, *, monotonic: Callable[[], float] = time.monotonic) -> None:
        self.bound = bound
        self._monotonic = monotonic
        #: since when this worker has had no partitions (None: it has some)
        self._since: float | None = monotonic()
        self._baseline: tuple[int, ...] | None = None
        self._baseline_at = 0.0
        self._rejoined = False

    def assigned(self, partitions: set[int]) -> None:
        """The group gave this worker ``partitions`` (maybe none: a spare, or left behind)."""
        if partitions:
            self._since, self._baseline, self._rejoined = None, None, False
        elif self._since is None:
            self._since = self._monotonic()

    def lost(self) -> None:
        if self._since is None:
            self._since = self._monotonic()

    def due(self) -> bool:
        """Whether to read the group's progress now (partitionless for a bound, or since the
        last reading)."""
        now = self._monotonic()
        if self._since is None or now - self._since < self.bound:
            return False
        return self._baseline is None or now - self._baseline_at >= self.bound

    def observe(self, progress: GroupProgress | None) -> Verdict:
        """What to do, given the group's progress (None: it could not be read)."""
        now = self._monotonic()
        if progress is None or not progress.waiting or progress.committed != self._baseline:
            self._baseline = None if progress is None else progress.committed
            self._baseline_at = now
            return "wait"
        if now - self._baseline_at < self.bound:
            return "wait"
        if not self._rejoined:
            self._rejoined = True
            self._baseline_at = now
            return "rejoin"
        return "fail"
