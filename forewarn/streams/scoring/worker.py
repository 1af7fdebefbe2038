"""The scoring worker: a confluent-kafka micro-batch loop around the pure ``ScoringEngine``.

Per batch, with ``exactly_once`` (the default): consume up to ``batch_size`` records from
journey-events and customer-profiles, let the engine decode, score and decide, then in one
Kafka transaction produce the actions, decisions, dead letters and one state-changelog
record per changed customer, and commit the consumed offsets. A batch that fails is aborted,
its partitions' state is rolled back to what the changelog holds, and the consumer goes back
to the last committed offsets: the batch is retried as if it had never been seen.

On assignment the worker restores each new partition's state from the changelog (from the
local store's checkpoint when it has one) before it scores that partition; it is ready once
every assigned partition is restored. There is never an open transaction during a rebalance:
transactions begin after ``consume`` returns and end before it is called again.

SIGTERM or SIGINT: finish the current batch, commit, close, exit 0.
"""

from __future__ import annotations

import base64
import logging
import math
import signal
import threading
import time
from collections.abc import Callable
from http.server import ThreadingHTTPServer
from pathlib import Path
from types import FrameType

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)

from forewarn.models.churn import (
    CARD_FILE,
    MODEL_FILE,
    ArtifactError,
    ChurnModel,
    default_model_path,
    load_churn_model,
)
from forewarn.models.config_file import ConfigFileError
from forewarn.models.friction import load_friction
from forewarn.models.ports import Clock
from forewarn.models.state_codec import encode_state
from forewarn.rules.rulebook import Rulebook, default_rulebook_path, load_rulebook
from forewarn.streams.codecs import Headers, RawRecord, encode
from forewarn.streams.metrics import Health, ScoringMetrics
from forewarn.streams.scoring.engine import BatchResult, ScoringEngine
from forewarn.streams.scoring.state import (
    STREAM_TIME_HEADER,
    Encoded,
    RestoreResult,
    WorkerStores,
    restore_partition,
)
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

    def publish_state(
        self,
        encoded: dict[int, Encoded],
        stream_times: dict[int, float],
        on_delivery: Callable[[KafkaError | None, Message], None],
    ) -> None:
        """One changelog record per changed customer, to the partition that owns it."""
        p, topic = self.producer, self.topics.state
        for partition, states in encoded.items():
            st = stream_times.get(partition)
            headers: list[tuple[str, str | bytes | None]] | None = (
                None if st is None else [(STREAM_TIME_HEADER, repr(st).encode())]
            )
            for cid, value in states.items():
                p.produce(
                    topic,
                    key=cid.encode(),
                    value=value,
                    partition=partition,
                    headers=headers,
                    on_delivery=on_delivery,
                )
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


class ModelWatch:
    """The churn model's artifact directory, loaded at start and again when it changes.

    A change is a different resolved path (a symlink pointed elsewhere) or different files
    (size or modification time of the card or the model).
    """

    def __init__(self, path: Path | None, friction_version: str) -> None:
        self.path = path
        self.friction_version = friction_version
        self.version: str | None = None
        self._stamp: tuple[object, ...] | None = None

    def _where(self) -> Path | None:
        if self.path is not None and str(self.path) == "none":
            return None
        return self.path or default_model_path()

    def _stamp_of(self, where: Path) -> tuple[object, ...]:
        return file_stamp(where, where / CARD_FILE, where / MODEL_FILE)

    def load_first(self) -> ChurnModel | None:
        """The model to start with; ``ArtifactError`` stops the worker before it starts."""
        where = self._where()
        if where is None:
            return None
        self._stamp = self._stamp_of(where)
        model = load_churn_model(where, self.friction_version)
        self.version = model.version
        log.info("churn model %s from %s", model.version, where)
        return model

    def changed(self) -> ChurnModel | None:
        """A newly loaded model if the artifact changed, else None (raises if refused)."""
        where = self._where()
        if where is None:
            return None
        stamp = self._stamp_of(where)
        if stamp == self._stamp:
            return None
        self._stamp = stamp  # a refused artifact is not retried until it changes again
        model = load_churn_model(where, self.friction_version)
        self.version = model.version
        return model


def file_stamp(*paths: Path) -> tuple[object, ...]:
    """What tells a changed file: resolved path (symlinks), modification time and size."""
    out: list[object] = []
    for f in paths:
        out.append(f.resolve())
        out.append((f.stat().st_mtime_ns, f.stat().st_size) if f.exists() else None)
    return tuple(out)


class RulebookWatch:
    """The rulebook file, loaded at start and again when it changes (between batches)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path or default_rulebook_path()
        self._stamp = file_stamp(self.path)
        self.book = load_rulebook(self.path)

    def changed(self) -> Rulebook | None:
        """A newly loaded rulebook if the file changed; ``ConfigFileError`` if refused."""
        stamp = file_stamp(self.path)
        if stamp == self._stamp:
            return None
        self._stamp = stamp  # a refused file is not retried until it changes again
        self.book = load_rulebook(self.path)
        return self.book


class WorkerFenced(RuntimeError):
    """Another worker started with this worker's transactional id and took over."""


class ScoringWorker:
    def __init__(
        self,
        settings: Settings,
        *,
        clock: Clock | None = None,
        metrics: ScoringMetrics | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics or ScoringMetrics()
        self.health = Health(settings.liveness_timeout_seconds)
        self.stores = WorkerStores(settings.state_dir, settings.topics.state)
        friction = load_friction(settings.friction_path)
        self.models = ModelWatch(settings.model_path, friction.version)
        self.rules = RulebookWatch(settings.rules_path)
        self.engine = ScoringEngine(
            churn=self.models.load_first(),
            friction=friction,
            rulebook=self.rules.book,
            decode=settings.decode_settings(),
            stores=self.stores,
            clock=clock,
            profiles_topic=settings.topics.customer_profiles,
            idle_ttl_seconds=settings.idle_ttl_days * 86400,
        )
        self.gate = ProfileGate(settings.topics.journey_events, settings.topics.customer_profiles)
        self._stop = threading.Event()
        self._to_restore: set[int] = set()
        #: changelog partition -> offset after the last state record delivered
        self._changelog_next: dict[int, int] = {}
        self._http: ThreadingHTTPServer | None = None
        self.batches = 0
        self.records = 0
        self.restores: list[RestoreResult] = []

    def stop(self) -> None:
        """Ask the loop to finish its current batch and exit."""
        self._stop.set()

    def install_signal_handlers(self) -> None:
        def handler(signum: int, _frame: FrameType | None) -> None:
            log.info("received %s: finishing the current batch", signal.Signals(signum).name)
            self.stop()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)

    def serve_http(self, host: str, port: int) -> None:
        """``/metrics``, ``/healthz`` and ``/readyz`` on ``host:port`` until the worker stops."""
        self._http = self.metrics.serve(host, port, self.health)

    # -- rebalances: no transaction is open while these run (see the module docstring) --

    def _events_partitions(self, partitions: list[TopicPartition]) -> set[int]:
        events = self.settings.topics.journey_events
        return {tp.partition for tp in partitions if tp.topic == events}

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.gate.on_assign(consumer, partitions)
        mine = self._events_partitions(partitions)
        # Eager (range) assignment hands over the whole new assignment at once: stores of
        # partitions that went elsewhere are dropped; kept ones catch up from their checkpoint.
        self.stores.keep_only(mine)
        self.health.assigned = mine
        self._to_restore = set(mine)
        self.health.restoring = set(mine)
        self.metrics.partitions.set(len(mine))
        self.metrics.rebalances.labels("assigned").inc()
        log.info("assigned partitions %s", sorted(mine))

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._lose(consumer, partitions, "revoked")

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self._lose(consumer, partitions, "lost")

    def _lose(self, consumer: Consumer, partitions: list[TopicPartition], kind: str) -> None:
        self.gate.on_revoke(consumer, partitions)
        gone = self._events_partitions(partitions)
        self.health.assigned -= gone
        self.health.restoring -= gone
        self._to_restore -= gone
        self.metrics.partitions.set(len(self.health.assigned))
        self.metrics.rebalances.labels(kind).inc()
        log.info("%s partitions %s", kind, sorted(gone))

    def _restore(self, restorer: Consumer) -> None:
        topic = self.settings.topics.state
        for p in sorted(self._to_restore):
            self.metrics.restoring.set(len(self._to_restore))

            progress = self._restore_progress()
            store = self.stores.partition(p)
            result = restore_partition(restorer, topic, p, store, progress=progress)
            self.engine.stream_times[p] = store.stream_time
            self._to_restore.discard(p)
            self.health.restoring.discard(p)
            self.restores.append(result)
            self.metrics.restore_seconds.observe(result.seconds)
            if result.unreadable:
                log.error(
                    "partition %d: %d customers' changelog records are unreadable; their events "
                    "go to the DLQ as processing_error until the records are replaced",
                    p,
                    result.unreadable,
                )
            log.info(
                "restored partition %d: %d changelog records from offset %s, %d customers, %.2f s",
                p,
                result.records,
                "start" if result.from_checkpoint is None else result.from_checkpoint,
                result.customers,
                result.seconds,
            )
        self.metrics.restoring.set(0)
        self.metrics.restore_remaining.set(0)

    def _restore_progress(self) -> Callable[[int, int], None]:
        done = 0

        def progress(read: int, remaining: int) -> None:
            nonlocal done
            self.health.beat()  # a long restore is the loop turning, not a hang
            self.metrics.restore_records.inc(read - done)
            done = read
            self.metrics.restore_remaining.set(remaining)

        return progress

    def _rollback(self, partitions: set[int]) -> None:
        """Undo a failed batch's state: back to what the changelog holds."""
        for p in partitions:
            store = self.stores.stores.get(p)
            if store is not None and not store.discard():
                self.stores.drop(p)
            if p in self.health.assigned:
                self._to_restore.add(p)
                self.health.restoring.add(p)

    # -- one batch --

    def _process(self, records: list[RawRecord], restorer: Consumer) -> BatchResult:
        try:
            return self.engine.process(records)
        except Exception:
            # A bug, not bad data (bad data is dead-lettered inside the engine): roll the
            # state back, then isolate the record that triggers it so the partition does
            # not stall.
            log.exception("batch of %d failed; retrying record by record", len(records))
            self._rollback({r.partition for r in records})
            self._restore(restorer)
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

    def _delivered(self, err: KafkaError | None, msg: Message) -> None:
        if err is None:
            p, o = msg.partition() or 0, msg.offset() or 0
            if o + 1 > self._changelog_next.get(p, 0):
                self._changelog_next[p] = o + 1

    def _encode(self, result: BatchResult) -> dict[int, Encoded]:
        encoded: dict[int, Encoded] = {}
        for c in result.changes:
            value = None if c.state is None else encode_state(c.state)
            encoded.setdefault(c.partition, {})[c.customer_id] = value
            if value is not None:
                self.metrics.state_bytes.observe(len(value))
        return encoded

    def _publish(
        self,
        consumer: Consumer,
        producer: Producer,
        sink: KafkaOutputSink,
        records: list[RawRecord],
        result: BatchResult,
    ) -> bool:
        """Publish the batch and commit its offsets; False when it was aborted."""
        s = self.settings
        encoded = self._encode(result)
        offsets = _next_offsets(records)
        try:
            if s.exactly_once:
                producer.begin_transaction()
            sink.publish(result)
            sink.publish_state(encoded, result.stream_times, self._delivered)
            if s.exactly_once:
                producer.send_offsets_to_transaction(
                    offsets, consumer.consumer_group_metadata(), 30
                )
                if s.fault_hang_after_batches is not None and (
                    self.batches >= s.fault_hang_after_batches
                ):
                    self._hang(producer, result)
                    return self._abort(consumer, producer, records, "stopped while held")
                _commit_transaction(producer)
            else:
                remaining = producer.flush(30)
                if remaining:
                    raise RuntimeError(f"{remaining} records not acknowledged by the broker")
                consumer.commit(offsets=offsets, asynchronous=False)
        except KafkaException as e:
            err: KafkaError = e.args[0]
            if err.code() in (KafkaError.PRODUCER_FENCED, KafkaError._FENCED):
                raise WorkerFenced(
                    f"fenced: another worker runs with transactional id {s.transactional_id!r} "
                    "(give every worker its own FOREWARN_INSTANCE_ID); this one stops"
                ) from e
            if not s.exactly_once or err.fatal() or not err.txn_requires_abort():
                raise
            return self._abort(consumer, producer, records, str(err))
        if s.exactly_once:
            self.metrics.transactions.labels("committed").inc()
        for p, states in encoded.items():
            st = result.stream_times.get(p, -math.inf)
            self.stores.partition(p).commit(states, self._changelog_next.get(p), st)
        return True

    def _reload_model(self) -> None:
        old = self.models.version
        try:
            changed = self.models.changed()
        except ArtifactError as e:
            self.metrics.model_reloads.labels("refused").inc()
            log.error("refused the new churn model, keeping %s: %s", old, e)
            return
        if changed is not None:
            self.engine.churn = changed
            self.metrics.model_reloads.labels("loaded").inc()
            self.metrics.model_in_use(old, changed.version)
            log.info("churn model %s replaced %s", changed.version, old)

    def _reload_rulebook(self) -> None:
        old = self.engine.rulebook.version
        try:
            book = self.rules.changed()
        except ConfigFileError as e:
            self.metrics.rulebook_reloads.labels("refused").inc()
            log.error("refused the changed rulebook, keeping %s:\n%s", old, e)
            return
        if book is not None:
            self.engine.rulebook = book
            self.metrics.rulebook_reloads.labels("loaded").inc()
            self.metrics.rulebook_in_use(old, book.version)
            log.info("rulebook %s (%d rules) replaced %s", book.version, len(book.rules), old)

    def _abort(
        self, consumer: Consumer, producer: Producer, records: list[RawRecord], why: str
    ) -> bool:
        """Abort the batch's transaction; its records will be consumed and scored again."""
        log.warning("aborting the batch's transaction: %s", why)
        producer.abort_transaction(30)
        self.metrics.transactions.labels("aborted").inc()
        self._rollback({r.partition for r in records})
        _rewind(consumer, records)
        return False

    def _hang(self, producer: Producer, result: BatchResult) -> None:
        producer.flush(30)
        log.warning(
            "fault injection: holding the transaction of batch %d open (%d changelog records, "
            "%d decisions produced) until stopped",
            self.batches + 1,
            len(result.changes),
            len(result.decisions),
        )
        self._stop.wait()

    def run(self) -> None:
        s = self.settings
        consumer = Consumer(kafka_config(s, "consumer"))
        restorer = Consumer(kafka_config(s, "restore"))
        producer = Producer(
            kafka_config(s, "transactional_producer" if s.exactly_once else "producer")
        )
        if s.exactly_once:
            # Fences an earlier incarnation with the same instance id and aborts whatever
            # transaction it left open, so restores below never wait on it.
            producer.init_transactions(30)
        sink = KafkaOutputSink(producer, s)
        consumer.subscribe(
            [s.topics.journey_events, s.topics.customer_profiles],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )
        log.info(
            "scoring %s + %s as group %s (instance %s, %s) on %s",
            s.topics.journey_events,
            s.topics.customer_profiles,
            s.group_id,
            s.instance_id,
            "exactly-once" if s.exactly_once else "at-least-once",
            s.bootstrap_servers,
        )
        self.metrics.up.set(1)
        self.metrics.model_in_use(None, self.models.version)
        self.metrics.rulebook_in_use(None, self.rules.book.version)
        next_model_check = time.monotonic() + s.model_check_seconds
        try:
            while not self._stop.is_set():
                self.health.beat()
                if time.monotonic() >= next_model_check:  # between batches, never inside one
                    next_model_check = time.monotonic() + s.model_check_seconds
                    self._reload_model()
                    self._reload_rulebook()
                msgs = consumer.consume(s.batch_size, s.batch_timeout_seconds)
                started = time.perf_counter()
                if self._to_restore:
                    self._restore(restorer)
                records = []
                for m in msgs:
                    err = m.error()
                    if err is None:
                        records.append(to_raw(m))
                    elif err.code() != KafkaError._PARTITION_EOF:
                        self.metrics.consume_errors.labels(err.name()).inc()
                        log.warning("consume error: %s", err)
                if self.gate.holding:
                    records = self.gate.filter(consumer, records)
                if not records:
                    continue
                result = self._process(records, restorer)
                if not self._publish(consumer, producer, sink, records, result):
                    continue
                self.batches += 1
                self.records += len(records)
                self.metrics.observe_batch(result, len(records), time.perf_counter() - started)
                self.metrics.customers.set(self.stores.customers())
        finally:
            self.health.running = False
            self.metrics.up.set(0)
            producer.flush(10)
            consumer.close()
            restorer.close()
            self.stores.close()
            if self._http is not None:
                self._http.shutdown()
                self._http.server_close()
            log.info("stopped after %d batches, %d records", self.batches, self.records)


def _commit_transaction(producer: Producer, attempts: int = 3) -> None:
    for attempt in range(attempts):
        try:
            producer.commit_transaction(30)
            return
        except KafkaException as e:
            err: KafkaError = e.args[0]
            if not err.retriable() or attempt == attempts - 1:
                raise
            log.warning("retrying the transaction commit: %s", err)


def _rewind(consumer: Consumer, records: list[RawRecord]) -> None:
    """Send the consumer back to the last committed offsets of the batch's partitions."""
    tps = [TopicPartition(t, p) for t, p in {(r.topic, r.partition) for r in records}]
    for tp in consumer.committed(tps, timeout=10):
        offset = tp.offset if tp.offset >= 0 else OFFSET_BEGINNING
        consumer.seek(TopicPartition(tp.topic, tp.partition, offset))


def _next_offsets(records: list[RawRecord]) -> list[TopicPartition]:
    last: dict[tuple[str, int], int] = {}
    for r in records:
        key = (r.topic, r.partition)
        if r.offset >= last.get(key, -1):
            last[key] = r.offset
    return [TopicPartition(t, p, o + 1) for (t, p), o in last.items()]
