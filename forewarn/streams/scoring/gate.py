"""The profile gate: a partition's events wait until its profiles are read to where they stood.

Without it, a worker starting on a backlog would score events before the profiles that carry
consent arrive, and suppress every action for want of consent. When a profiles partition is
assigned, the events of the same partition number are held back (kept in memory, their
partition paused, so at most what was already fetched is held) until the consumer's position
on that profiles partition reaches the partition's end as it stood at assignment. Held events
are then released in order; they are committed only after they are processed.

The end is found by reading, not by asking: the worker's restore consumer reads the profiles
partition from its reported end until the fetch says it is at the end
(``stores.partition_ends``). The embedded broker reports the base offset of the partition's
last record batch as its end, so asking said "1" for 1,000 profiles and released events early
(docs/decisions.md §16); the fetch's own end is right on every broker. (The scoring consumer
could report ends itself, with ``enable.partition.eof``, but that cost a quarter of its
throughput against the embedded broker.) If the end is never reached (a profile stream that
never pauses), the events are released after ``max_wait_seconds`` with a warning.

Pausing happens here, not in the rebalance callback: partitions are not assigned yet while
the callback runs. Resuming on revocation does happen in the callback: librdkafka keeps a
partition's application pause across an unassign and a new assign, so a partition revoked or
lost while held came back paused and was never read again (a 90 s broker stall at start
left one partition of the drill unread for good).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Protocol

from confluent_kafka import TopicPartition

from forewarn.pipeline.codecs import RawRecord

log = logging.getLogger("forewarn.score")

#: how long events wait for their profiles at most
DEFAULT_MAX_WAIT_SECONDS = 120.0


class GatedConsumer(Protocol):
    """What the gate needs of a consumer (a unit test can give it this)."""

    def pause(self, partitions: list[TopicPartition]) -> None: ...

    def resume(self, partitions: list[TopicPartition]) -> None: ...

    def position(self, partitions: list[TopicPartition]) -> list[TopicPartition]: ...


class ProfileGate:
    def __init__(
        self,
        events_topic: str,
        profiles_topic: str,
        *,
        max_wait_seconds: float = DEFAULT_MAX_WAIT_SECONDS,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.events_topic = events_topic
        self.profiles_topic = profiles_topic
        self.max_wait_seconds = max_wait_seconds
        self._monotonic = monotonic
        #: profiles partition -> when its events are released even without the end reached
        self._deadlines: dict[int, float] = {}
        #: profiles partition -> the offset its profiles must be read to (once known)
        self._ends: dict[int, int] = {}
        self._held: dict[int, list[RawRecord]] = {}

    def on_assign(self, partitions: list[TopicPartition]) -> None:
        deadline = self._monotonic() + self.max_wait_seconds
        for tp in partitions:
            if tp.topic == self.profiles_topic:
                self._deadlines[tp.partition] = deadline
                self._ends.pop(tp.partition, None)

    def on_revoke(self, consumer: GatedConsumer, partitions: list[TopicPartition]) -> None:
        """Forget ``partitions``: held events were never committed, so the partition's next
        owner (this worker again, perhaps) reads them again; what the gate paused is resumed
        (the pause would outlive the assignment)."""
        for tp in partitions:
            if tp.topic == self.profiles_topic:
                self._deadlines.pop(tp.partition, None)
                self._ends.pop(tp.partition, None)
            elif tp.topic == self.events_topic and self._held.pop(tp.partition, None) is not None:
                consumer.resume([TopicPartition(self.events_topic, tp.partition)])

    def ends_wanted(self) -> list[int]:
        """Profiles partitions whose end the worker must find (``read_to``)."""
        return sorted(p for p in self._deadlines if p not in self._ends)

    def read_to(self, partition: int, end: int, committed: int) -> None:
        """Profiles of ``partition`` must be read to ``end``; ``committed`` is where the group
        stands on it (nothing to wait for when it is there already)."""
        if partition not in self._deadlines:
            return
        if end <= max(committed, 0):  # read before, or nothing ever written
            del self._deadlines[partition]
        else:
            self._ends[partition] = end

    @property
    def holding(self) -> bool:
        return bool(self._deadlines or self._held)

    def waiting_for(self) -> list[int]:
        """The partitions whose profiles are still being read."""
        return sorted(self._deadlines)

    def filter(self, consumer: GatedConsumer, records: list[RawRecord]) -> list[RawRecord]:
        """The records that may be processed now, released held events first."""
        now = self._monotonic()
        reached = {}
        if self._ends:
            tps = [TopicPartition(self.profiles_topic, p) for p in self._ends]
            reached = {tp.partition: tp.offset for tp in consumer.position(tps)}
        for p, deadline in list(self._deadlines.items()):
            end = self._ends.get(p)
            if end is not None and reached.get(p, -1) >= end:
                del self._deadlines[p], self._ends[p]
            elif now >= deadline:
                log.warning(
                    "partition %d: profiles not read to their end within %.0f s; scoring its "
                    "events anyway",
                    p,
                    self.max_wait_seconds,
                )
                del self._deadlines[p]
                self._ends.pop(p, None)
        released: list[RawRecord] = []
        for p in [p for p in self._held if p not in self._deadlines]:
            released += self._held.pop(p)
            consumer.resume([TopicPartition(self.events_topic, p)])
        kept = []
        for r in records:
            if r.topic == self.events_topic and r.partition in self._deadlines:
                if r.partition not in self._held:
                    consumer.pause([TopicPartition(self.events_topic, r.partition)])
                self._held.setdefault(r.partition, []).append(r)
            else:
                kept.append(r)
        return released + kept
