"""Getting a worker's partitions' state back from the changelog, and finding where a topic's
partitions end.

A store remembers its **checkpoint**: the changelog offset up to which it already holds what
the changelog says. Restoring reads each partition's changelog from that checkpoint (from the
beginning when there is none) to its end. The partitions a worker is given are read together,
through one assignment: their fetches overlap, so a worker given several partitions waits
for the broker about as long as for one (issue 14).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

from confluent_kafka import (
    OFFSET_BEGINNING,
    OFFSET_END,
    Consumer,
    KafkaError,
    Message,
    TopicPartition,
)

from forewarn.pipeline.ports import Encoded, is_partition_record
from forewarn.streams.scoring.outputs import STREAM_TIME_HEADER
from forewarn.streams.scoring.stores import Store

log = logging.getLogger("forewarn.state")

#: how long one restore read waits for more records: short, since the end of a partition
#: comes as an event of its own and a partly filled read would otherwise wait it out
_RESTORE_READ_SECONDS = 0.05
#: how long a partition's fetched high watermark must stay below the store's checkpoint
#: before its changelog counts as behind
_BEHIND_SECONDS = 1.5


@dataclass(frozen=True, slots=True)
class RestoreResult:
    partition: int
    records: int
    customers: int
    #: how long the restore this partition was part of took (partitions restore together)
    seconds: float
    from_checkpoint: int | None


class ChangelogBehind(Exception):
    """The changelog ends before the store's checkpoint: the topic was recreated (a broker
    that came back empty, a topic deleted by hand). The store's contents are not what the
    changelog holds any more, so the store starts afresh from the changelog."""


class RestoreStalled(RuntimeError):
    """A restore read nothing and saw no end for too long (the broker is unreachable)."""


@dataclass(slots=True)
class _Reading:
    """One partition's changelog as it is being read."""

    partition: int
    start: int | None
    stream_time: float
    position: int = 0
    end: int | None = None
    records: int = 0
    #: only the last record of each customer matters
    latest: Encoded = field(default_factory=dict)
    #: since when the fetched high watermark says the changelog is behind (None: it does not)
    behind_since: float | None = None


def restore_partitions(
    consumer: Consumer,
    changelog: str,
    stores: Mapping[int, Store],
    *,
    progress: Callable[[int, int], None] | None = None,
    chunk: int = 1000,
    stopping: Callable[[], bool] = lambda: False,
    stall_seconds: float = 30.0,
) -> list[RestoreResult] | None:
    """Bring each store up to the end of its changelog partition; None when ``stopping()``.

    ``consumer`` is a plain (never-committing) consumer with ``enable.partition.eof`` on and
    ``read_committed`` isolation; ``progress(read, remaining)`` is called after each read,
    over all the partitions. A store whose checkpoint lies beyond its changelog's end is
    cleared and restored from the beginning; ``RestoreStalled`` when nothing arrives for
    ``stall_seconds``. Records are filed as they are (``Store.apply``): each customer is
    decoded when first read.
    """
    started = time.perf_counter()
    readings = {p: _Reading(p, s.checkpoint, s.stream_time) for p, s in stores.items()}
    behind = _read_changelogs(consumer, changelog, readings, progress, chunk, stopping,
                              stall_seconds)  # fmt: skip
    if behind is None:
        return None
    if behind:
        for p, why in behind.items():
            log.warning("partition %d: %s; its state starts afresh from the changelog", p, why)
            stores[p].clear()
            readings[p] = _Reading(p, None, stores[p].stream_time)
        again = {p: readings[p] for p in behind}
        if _read_changelogs(consumer, changelog, again, progress, chunk, stopping,
                            stall_seconds) is None:  # fmt: skip
            return None
    seconds = time.perf_counter() - started
    results = []
    for p, r in sorted(readings.items()):
        store = stores[p]
        store.apply(r.latest)
        store.advance(r.stream_time)
        store.commit({}, r.end)
        customers = sum(not is_partition_record(k) for k in r.latest)
        results.append(RestoreResult(p, r.records, customers, seconds, r.start))
    return results


def _read_changelogs(
    consumer: Consumer,
    changelog: str,
    readings: dict[int, _Reading],
    progress: Callable[[int, int], None] | None,
    chunk: int,
    stopping: Callable[[], bool],
    stall_seconds: float,
) -> dict[int, str] | None:
    """Read every partition of ``readings`` to its end; the partitions found behind their
    store's checkpoint (partition -> why), or None when ``stopping()``."""
    behind: dict[int, str] = {}
    highs: dict[int, int] = {}
    tps = []
    for p, r in readings.items():
        tp = TopicPartition(changelog, p, OFFSET_BEGINNING if r.start is None else r.start)
        low, high = consumer.get_watermark_offsets(tp, timeout=10)
        if low == high and (r.start is None or r.start == high):
            # An empty partition (on the embedded broker too, whose reported end may fall
            # short of the last batch but never equals the start of a partition that holds
            # one) with the store's checkpoint at its end: nothing to read, no fetch to wait.
            r.end = high
            continue
        r.position = low if r.start is None else max(r.start, low)
        highs[p] = high
        tps.append(tp)
    if not tps:
        return behind
    consumer.assign(tps)
    reading = {tp.partition for tp in tps}
    read = 0
    last_news = time.monotonic()
    try:
        while reading:
            if stopping():
                return None
            msgs = consumer.consume(chunk, _RESTORE_READ_SECONDS)
            heard: set[int] = set()
            for m in msgs:
                p = m.partition() or 0
                if p not in reading:
                    continue
                heard.add(p)
                why = _take(m, readings[p])
                if why is not None:
                    behind[p] = why
                    reading.discard(p)
                elif readings[p].end is not None:
                    reading.discard(p)
            read += len(msgs)
            if msgs:
                last_news = time.monotonic()
            for p in reading - heard:
                why = _behind_by_watermark(consumer, changelog, readings[p])
                if why is not None:
                    behind[p] = why
                    reading.discard(p)
            if reading and not msgs and time.monotonic() - last_news > stall_seconds:
                raise RestoreStalled(
                    f"restoring {changelog}{sorted(reading)}: nothing read for {stall_seconds:g} s"
                )
            if progress is not None:
                remaining = sum(max(0, highs[p] - readings[p].position) for p in reading)
                progress(sum(r.records for r in readings.values()), remaining)
    finally:
        consumer.unassign()
    return behind


def _take(m: Message, r: _Reading) -> str | None:
    """File one consumed message in its partition's reading; why the changelog is behind
    the store's checkpoint, if it is."""
    err = m.error()
    start = r.start
    if err is not None:
        if err.code() == KafkaError._PARTITION_EOF:
            r.end = m.offset()
            if start is not None and r.end is not None and r.end < start:
                return f"the changelog ends at {r.end}, before the store's checkpoint {start}"
            return None
        raise RuntimeError(f"restoring {m.topic()}[{r.partition}]: {err}")
    offset = m.offset() or 0
    if start is not None and offset < start:
        # A real Kafka resets a fetch beyond the end to the beginning.
        return f"the changelog restarts at offset {offset}, before the store's checkpoint {start}"
    r.position = offset + 1
    r.records += 1
    key = m.key()
    if key is None:
        return None
    cid = key.decode() if isinstance(key, bytes) else key
    value = m.value()
    r.latest[cid] = value if isinstance(value, bytes) or value is None else value.encode()
    headers = m.headers() or []
    for name, v in headers.items() if isinstance(headers, dict) else headers:
        if name == STREAM_TIME_HEADER and v is not None:
            r.stream_time = max(r.stream_time, float(v))
    return None


def _behind_by_watermark(consumer: Consumer, changelog: str, r: _Reading) -> str | None:
    """The embedded broker answers a fetch beyond the end with nothing at all, but the
    fetch's high watermark tells. (Right after an assignment the cached watermark may still
    be an earlier fetch's: trust it once it has said so for a while.)"""
    _, fetched_high = consumer.get_watermark_offsets(
        TopicPartition(changelog, r.partition), cached=True
    )
    if not (r.start is not None and 0 <= fetched_high < r.position):
        r.behind_since = None
        return None
    now = time.monotonic()
    if r.behind_since is None:
        r.behind_since = now
    if now - r.behind_since < _BEHIND_SECONDS:
        return None
    return f"the changelog ends at {fetched_high}, before the store's checkpoint {r.start}"


def partition_ends(
    consumer: Consumer,
    topic: str,
    partitions: Iterable[int],
    *,
    stopping: Callable[[], bool] = lambda: False,
    stall_seconds: float = 30.0,
) -> dict[int, int] | None:
    """Where each of ``topic``'s ``partitions`` ends, as a fetch reports it; None when
    ``stopping()``.

    Reads from the end the broker reports when asked (which the embedded broker gives as the
    base offset of the last record batch, docs/decisions.md §16) to librdkafka's
    end-of-partition event, which comes from the fetch and is right everywhere. All the
    partitions are read together: a worker given several is ready after one wait, not one
    per partition. ``consumer`` is the restore consumer (``enable.partition.eof`` on).
    """
    wanted = set(partitions)
    ends: dict[int, int] = {}
    consumer.assign([TopicPartition(topic, p, OFFSET_END) for p in sorted(wanted)])
    last_news = time.monotonic()
    try:
        while not stopping():
            if wanted <= ends.keys():
                return ends
            msgs = consumer.consume(1000, 0.1)
            for m in msgs:
                err = m.error()
                if err is None:
                    continue
                if err.code() == KafkaError._PARTITION_EOF:
                    ends.setdefault(m.partition() or 0, m.offset() or 0)
                    continue
                raise RuntimeError(f"reading to the end of {topic}[{m.partition()}]: {err}")
            if msgs:
                last_news = time.monotonic()
            elif time.monotonic() - last_news > stall_seconds:
                missing = sorted(wanted - ends.keys())
                raise RestoreStalled(f"{topic}{missing}: no end seen for {stall_seconds:g} s")
    finally:
        consumer.unassign()
    return None
