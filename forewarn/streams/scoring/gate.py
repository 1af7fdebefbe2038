"""The profile gate: a partition's events wait until its profiles have been read to the end.

Without it, a worker starting on a backlog would score events before the profiles that carry
consent arrive, and suppress every action for want of consent. When a profiles partition is
assigned, the events of the same partition number are held back (kept in memory, their
partition paused, so at most what was already fetched is held) until the consumer reports
the end of that profiles partition. Held events are then released in order; they are
committed only after they are processed.

The end is librdkafka's end-of-partition event (``enable.partition.eof``), not a high
watermark asked for up front: the embedded broker answers that question with the base offset
of the partition's last record batch, so a watermark read there said "1" for 1,000 profiles
and released events early (docs/decisions.md §16). The end-of-partition event comes from the
fetch itself and is right on every broker. If it never comes (a profile stream that never
pauses), the events are released after ``max_wait_seconds`` with a warning.

Pausing happens here, not in the rebalance callback: partitions are not assigned yet while
the callback runs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Protocol

from confluent_kafka import TopicPartition

from forewarn.streams.codecs import RawRecord

log = logging.getLogger("forewarn.score")

#: how long events wait for their profiles at most
DEFAULT_MAX_WAIT_SECONDS = 120.0


class Pausable(Protocol):
    """What the gate needs of a consumer (a unit test can give it this)."""

    def pause(self, partitions: list[TopicPartition]) -> None: ...

    def resume(self, partitions: list[TopicPartition]) -> None: ...


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
        #: profiles partition -> when its events are released even without an end seen
        self._waiting: dict[int, float] = {}
        self._held: dict[int, list[RawRecord]] = {}

    def on_assign(self, partitions: list[TopicPartition]) -> None:
        deadline = self._monotonic() + self.max_wait_seconds
        for tp in partitions:
            if tp.topic == self.profiles_topic:
                self._waiting[tp.partition] = deadline

    def on_revoke(self, partitions: list[TopicPartition]) -> None:
        # Held events were never committed: the partition's next owner reads them again.
        for tp in partitions:
            if tp.topic == self.profiles_topic:
                self._waiting.pop(tp.partition, None)
            elif tp.topic == self.events_topic:
                self._held.pop(tp.partition, None)

    def reached_end(self, topic: str, partition: int) -> None:
        """The consumer read ``topic[partition]`` to its end (an end-of-partition event)."""
        if topic == self.profiles_topic:
            self._waiting.pop(partition, None)

    @property
    def holding(self) -> bool:
        return bool(self._waiting or self._held)

    def waiting_for(self) -> list[int]:
        """The partitions whose profiles are still being read."""
        return sorted(self._waiting)

    def filter(self, consumer: Pausable, records: list[RawRecord]) -> list[RawRecord]:
        """The records that may be processed now, released held events first."""
        now = self._monotonic()
        for p, deadline in list(self._waiting.items()):
            if now >= deadline:
                log.warning(
                    "partition %d: profiles not read to their end within %.0f s; scoring its "
                    "events anyway",
                    p,
                    self.max_wait_seconds,
                )
                del self._waiting[p]
        released: list[RawRecord] = []
        for p in [p for p in self._held if p not in self._waiting]:
            released += self._held.pop(p)
            consumer.resume([TopicPartition(self.events_topic, p)])
        kept = []
        for r in records:
            if r.topic == self.events_topic and r.partition in self._waiting:
                if r.partition not in self._held:
                    consumer.pause([TopicPartition(self.events_topic, r.partition)])
                self._held.setdefault(r.partition, []).append(r)
            else:
                kept.append(r)
        return released + kept
