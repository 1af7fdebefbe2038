"""What the worker reads from Kafka, as plain data: a batch of records, going back to read a
batch again, and how far the group has got on journey-events (for ``membership.py``, which
holds no Kafka types)."""

from __future__ import annotations

import logging

from confluent_kafka import Consumer, KafkaError, KafkaException, Message, TopicPartition

from forewarn.pipeline.codecs import Headers, RawRecord
from forewarn.streams.metrics import ScoringMetrics
from forewarn.streams.scoring.membership import GroupProgress

log = logging.getLogger("forewarn.score")


def read_batch(
    consumer: Consumer, size: int, timeout: float, metrics: ScoringMetrics
) -> list[RawRecord]:
    """Up to ``size`` records, waiting at most ``timeout`` seconds for the first one; consume
    errors are counted and logged, never raised (the next call reads on).

    The batch adapts to the load: under a backlog it is whatever the fetches queued, up to
    ``size``; on a quiet stream the first record is taken as soon as it arrives, with what
    came with it, instead of waiting for a full batch (at 2,000 events/s a batch of 500
    would hold its first record for 250 ms).
    """
    messages = consumer.consume(size, 0)
    if not messages:
        first = consumer.poll(timeout)
        messages = [] if first is None else [first]
        if first is not None and size > 1:
            messages += consumer.consume(size - 1, 0)
    records = []
    for m in messages:
        err = m.error()
        if err is None:
            records.append(to_raw(m))
        elif err.code() != KafkaError._PARTITION_EOF:
            metrics.consume_errors.labels(err.name()).inc()
            log.warning("consume error: %s", err)
    return records


def records_waiting(consumer: Consumer, records: list[RawRecord]) -> int:
    """How many records wait beyond the last ones read, in the partitions ``records`` came
    from: the broker's end as the latest fetch reported it (no request) against the next
    offset to read."""
    last: dict[tuple[str, int], int] = {}
    for r in records:
        last[r.topic, r.partition] = r.offset
    waiting = 0
    for (topic, p), offset in last.items():
        _, high = consumer.get_watermark_offsets(TopicPartition(topic, p), cached=True)
        waiting += max(0, high - offset - 1)
    return waiting


def to_raw(msg: Message) -> RawRecord:
    """A consumed message as plain data (only error-free messages get here)."""
    raw = msg.headers()  # None for most records: no tuple built for them
    headers = () if raw is None else _headers(raw)
    return RawRecord(msg.topic() or "", msg.partition() or 0, msg.offset() or 0,
                     _bytes(msg.key()), _bytes(msg.value()), headers)  # fmt: skip


def _bytes(v: str | bytes | None) -> bytes | None:
    return v.encode() if isinstance(v, str) else v


def _headers(raw: list[tuple[str, str | bytes | None]] | dict[str, str | bytes | None]) -> Headers:
    pairs = raw.items() if isinstance(raw, dict) else raw
    return tuple((k, _bytes(v)) for k, v in pairs)


def group_progress(consumer: Consumer, topic: str) -> GroupProgress | None:
    """The group's committed offsets on ``topic`` and whether records wait beyond them (None:
    the topic is missing or the broker is not answering)."""
    try:
        t = consumer.list_topics(topic, timeout=5).topics.get(topic)
        if t is None or t.error is not None or not t.partitions:
            return None
        tps = [TopicPartition(topic, p) for p in sorted(t.partitions)]
        committed = consumer.committed(tps, timeout=5)
        waiting = False
        for tp in committed:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, tp.partition),
                                                       timeout=5)  # fmt: skip
            waiting |= high > (tp.offset if tp.offset >= 0 else low)
    except KafkaException:
        return None
    return GroupProgress(tuple(tp.offset for tp in committed), waiting)


def rewind(consumer: Consumer, records: list[RawRecord]) -> None:
    """Send the consumer back to the batch's first record of each partition.

    Everything consumed and not committed is in the batch (the profile gate holds back whole
    partitions, which are then not in it), so its first offsets are the committed ones; no
    broker round trip is needed. A partition that went to another worker in the meantime is
    left alone: its new owner starts from the committed offset.
    """
    first: dict[tuple[str, int], int] = {}
    for r in records:
        key = (r.topic, r.partition)
        first[key] = min(first.get(key, r.offset), r.offset)
    for (topic, partition), offset in first.items():
        try:
            consumer.seek(TopicPartition(topic, partition, offset))
        except KafkaException as e:
            log.info("not rewinding %s[%d]: %s", topic, partition, e.args[0])
