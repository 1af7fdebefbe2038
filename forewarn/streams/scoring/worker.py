"""The scoring worker: a confluent-kafka micro-batch loop around the pure ``ScoringEngine``.

Per batch: consume up to ``batch_size`` records from journey-events and customer-profiles,
let the engine decode, score and decide, produce actions, decisions and dead letters, wait
for the broker to acknowledge them, then commit the consumed offsets. At-least-once: a crash
between produce and commit replays the batch, and consumers deduplicate by ``action_id``
(deterministic). Exactly-once transactions replace the flush+commit step later.

SIGTERM or SIGINT: finish the current batch, commit, close, exit 0.
"""

from __future__ import annotations

import base64
import logging
import signal
import threading
import time
from types import FrameType

from confluent_kafka import Consumer, KafkaError, Message, Producer, TopicPartition

from forewarn.models.ports import Clock, StateStore
from forewarn.rules.rulebook import load_rulebook
from forewarn.streams.codecs import Headers, RawRecord, encode
from forewarn.streams.metrics import ScoringMetrics
from forewarn.streams.scoring.engine import BatchResult, OutputSink, ScoringEngine
from forewarn.streams.settings import Settings, kafka_config

log = logging.getLogger("forewarn.score")


def _bytes(v: str | bytes | None) -> bytes | None:
    return v.encode() if isinstance(v, str) else v


def to_raw(msg: Message) -> RawRecord:
    """A consumed message as plain data (only error-free messages get here)."""
    return RawRecord(
        topic=msg.topic() or "",
        partition=msg.partition() or 0,
        offset=msg.offset() or 0,
        key=_bytes(msg.key()),
        value=_bytes(msg.value()),
        headers=_headers(msg),
    )


def _headers(msg: Message) -> Headers:
    raw = msg.headers() or ()
    pairs = raw.items() if isinstance(raw, dict) else raw
    return tuple((k, _bytes(v)) for k, v in pairs)


class KafkaOutputSink:
    """Publishes a batch's results, keyed by customer id (the DLQ keeps the original key)."""

    def __init__(self, producer: Producer, settings: Settings) -> None:
        self.producer = producer
        self.topics = settings.topics

    def publish(self, result: BatchResult) -> None:
        p, t = self.producer, self.topics
        for a in result.actions:
            p.produce(t.actions, key=a.customer_id.encode(), value=encode(a))
        for d in result.decisions:
            p.produce(t.decisions, key=d.customer_id.encode(), value=encode(d))
        for dl in result.dead_letters:
            key = None if dl.key_base64 is None else base64.b64decode(dl.key_base64)
            p.produce(t.dlq, key=key, value=encode(dl))
        p.poll(0)


class ProfileGate:
    """Hold a partition's events back until its profiles are read to where they stood.

    Without it, a worker starting on a backlog would score events before the profiles that
    carry consent arrive, and suppress every action for want of consent. On assignment the
    gate notes each profile partition's end; until the consumer's position reaches it, events
    of the same partition number are kept in memory and their partition is paused (so at most
    what was already fetched is held). Held events are released, in order, once the profiles
    are in; they are committed only after they are processed. Pausing happens here, not in
    the rebalance callback: partitions are not assigned yet while the callback runs.
    """

    def __init__(self, events_topic: str, profiles_topic: str) -> None:
        self.events_topic = events_topic
        self.profiles_topic = profiles_topic
        self._new: set[int] = set()
        self._targets: dict[int, int] = {}
        self._held: dict[int, list[RawRecord]] = {}

    def on_assign(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._new.update(tp.partition for tp in partitions if tp.topic == self.profiles_topic)

    def on_revoke(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # Held events were never committed: the partition's next owner reads them again.
        for tp in partitions:
            self._new.discard(tp.partition)
            self._targets.pop(tp.partition, None)
            if tp.topic == self.events_topic:
                self._held.pop(tp.partition, None)

    @property
    def holding(self) -> bool:
        return bool(self._new or self._targets or self._held)

    def filter(self, consumer: Consumer, records: list[RawRecord]) -> list[RawRecord]:
        """The records that may be processed now, released held events first."""
        for p in sorted(self._new):
            tp = TopicPartition(self.profiles_topic, p)
            low, high = consumer.get_watermark_offsets(tp, timeout=10)
            committed = consumer.committed([tp], timeout=10)[0].offset
            if (committed if committed >= 0 else low) < high:
                self._targets[p] = high
        self._new.clear()
        for p, target in list(self._targets.items()):
            pos = consumer.position([TopicPartition(self.profiles_topic, p)])[0].offset
            if pos >= target:
                del self._targets[p]
        released: list[RawRecord] = []
        for p in [p for p in self._held if p not in self._targets]:
            released += self._held.pop(p)
            consumer.resume([TopicPartition(self.events_topic, p)])
        kept = []
        for r in records:
            if r.topic == self.events_topic and r.partition in self._targets:
                if r.partition not in self._held:
                    consumer.pause([TopicPartition(self.events_topic, r.partition)])
                self._held.setdefault(r.partition, []).append(r)
            else:
                kept.append(r)
        return released + kept


class ScoringWorker:
    def __init__(
        self,
        settings: Settings,
        *,
        store: StateStore | None = None,
        clock: Clock | None = None,
        metrics: ScoringMetrics | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics or ScoringMetrics()
        self.engine = ScoringEngine(
            rulebook=load_rulebook(settings.rules_path),
            decode=settings.decode_settings(),
            store=store,
            clock=clock,
            profiles_topic=settings.topics.customer_profiles,
        )
        self._stop = threading.Event()
        self.batches = 0
        self.records = 0

    def stop(self) -> None:
        """Ask the loop to finish its current batch and exit."""
        self._stop.set()

    def install_signal_handlers(self) -> None:
        def handler(signum: int, _frame: FrameType | None) -> None:
            log.info("received %s: finishing the current batch", signal.Signals(signum).name)
            self.stop()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    def _process(self, records: list[RawRecord]) -> BatchResult:
        try:
            return self.engine.process(records)
        except Exception:
            # A bug, not bad data (bad data is dead-lettered inside the engine): isolate the
            # record that triggers it so the partition does not stall.
            log.exception("batch of %d failed; retrying record by record", len(records))
            merged = BatchResult.empty()
            for rec in records:
                try:
                    merged.extend(self.engine.process([rec]))
                except Exception as e:
                    merged.extend(self._poison(rec, e))
            return merged

    def _poison(self, rec: RawRecord, error: Exception) -> BatchResult:
        result = BatchResult.empty()
        result.dead_letters.append(self.engine.processing_error(rec, error))
        result.stats.dead_letters_by_reason["processing_error"] += 1
        return result

    def run(self) -> None:
        s = self.settings
        consumer = Consumer(kafka_config(s, "consumer"))
        producer = Producer(kafka_config(s, "producer"))
        sink: OutputSink = KafkaOutputSink(producer, s)
        gate = ProfileGate(s.topics.journey_events, s.topics.customer_profiles)
        consumer.subscribe(
            [s.topics.journey_events, s.topics.customer_profiles],
            on_assign=gate.on_assign,
            on_revoke=gate.on_revoke,
            on_lost=gate.on_revoke,
        )
        log.info(
            "scoring %s + %s as group %s on %s",
            s.topics.journey_events,
            s.topics.customer_profiles,
            s.group_id,
            s.bootstrap_servers,
        )
        self.metrics.up.set(1)
        try:
            while not self._stop.is_set():
                msgs = consumer.consume(s.batch_size, s.batch_timeout_seconds)
                started = time.perf_counter()
                records = []
                for m in msgs:
                    err = m.error()
                    if err is None:
                        records.append(to_raw(m))
                    elif err.code() != KafkaError._PARTITION_EOF:
                        self.metrics.consume_errors.labels(err.name()).inc()
                        log.warning("consume error: %s", err)
                if gate.holding:
                    records = gate.filter(consumer, records)
                if not records:
                    continue
                result = self._process(records)
                sink.publish(result)
                remaining = producer.flush(30)
                if remaining:
                    # Not acknowledged: do not commit, the batch will be replayed.
                    raise RuntimeError(f"{remaining} records not acknowledged by the broker")
                consumer.commit(offsets=_next_offsets(records), asynchronous=False)
                self.batches += 1
                self.records += len(records)
                self.metrics.observe_batch(result, len(records), time.perf_counter() - started)
                self.metrics.customers.set(len(self.engine.store))
        finally:
            self.metrics.up.set(0)
            producer.flush(10)
            consumer.close()
            log.info("stopped after %d batches, %d records", self.batches, self.records)


def _next_offsets(records: list[RawRecord]) -> list[TopicPartition]:
    last: dict[tuple[str, int], int] = {}
    for r in records:
        key = (r.topic, r.partition)
        if r.offset >= last.get(key, -1):
            last[key] = r.offset
    return [TopicPartition(t, p, o + 1) for (t, p), o in last.items()]
