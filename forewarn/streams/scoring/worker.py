"""The scoring worker: a confluent-kafka micro-batch loop around the pure ``ScoringEngine``.

Per batch: consume up to ``batch_size`` records from journey-events and customer-profiles,
let the engine decode, score and decide, turn the results into records that fit
(``outputs.py``), and publish them with the consumed offsets in one transaction
(``commit.py``). An aborted batch discards its state writes and is read again.

On assignment the worker restores each new partition's state from the changelog (from the
local store's checkpoint when it has one) before it scores that partition; it is ready once
every assigned partition is restored. There is never an open transaction during a rebalance:
transactions begin after ``consume`` returns and end before it is called again.

What no record, file or outage may do (docs/operations.md, "Failure modes"): a record that
makes scoring raise is isolated by splitting the batch and dead-lettered alone; a changed
model or rulebook that cannot be used is refused and the last good one kept; a broker that
stalls is waited for; a broker that comes back empty is restored from; a worker left without
partitions rejoins its group, then turns unhealthy.

SIGTERM or SIGINT: finish the current batch, commit, close, exit 0.
"""

from __future__ import annotations

import gc
import logging
import math
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from http.server import ThreadingHTTPServer

from confluent_kafka import Consumer, KafkaException, TopicPartition

from forewarn.models.friction import load_friction
from forewarn.models.state_codec import encode_state
from forewarn.pipeline.batch_limit import BatchLimit
from forewarn.pipeline.codecs import RawRecord
from forewarn.pipeline.engine import ScoringEngine
from forewarn.pipeline.isolation import process_isolating
from forewarn.pipeline.ports import Clock, Encoded
from forewarn.pipeline.results import BatchResult
from forewarn.streams.http import Health
from forewarn.streams.metrics import ScoringMetrics
from forewarn.streams.scoring.commit import (
    BrokerUnreachable,
    Committer,
    ProducerFailed,
    WorkerFenced,
)
from forewarn.streams.scoring.gate import ProfileGate
from forewarn.streams.scoring.learned import LearnedModels
from forewarn.streams.scoring.membership import AssignmentWatch
from forewarn.streams.scoring.outputs import Limits, OutputTopics, batch_records
from forewarn.streams.scoring.reading import (
    group_progress,
    read_batch,
    records_waiting,
    rewind,
)
from forewarn.streams.scoring.reloads import Reloads
from forewarn.streams.scoring.restore import (
    RestoreResult,
    RestoreStalled,
    partition_ends,
    restore_partitions,
)
from forewarn.streams.scoring.stores import PartitionStores
from forewarn.streams.scoring.watch import ModelWatch, RulebookWatch
from forewarn.streams.settings import Settings, kafka_config
from forewarn.streams.topics import existing_partitions

__all__ = ["BrokerUnreachable", "ProducerFailed", "ScoringWorker", "WorkerFenced"]

log = logging.getLogger("forewarn.score")

#: CPython's collector thresholds for a scoring process. A worker holds many long-lived
#: customer states and allocates for every event (a batch works on copies of its customers'
#: states); at the defaults (700, 10, 10) the collector walks all those states again and
#: again. Measured on the bench workload: 19.5 µs CPU per event at the defaults, 14.7 here.
GC_THRESHOLDS = (50_000, 20, 100)


def tune_garbage_collector() -> None:
    """Collect young objects less often (process-wide; the worker's only cycles are rare)."""
    gc.set_threshold(*GC_THRESHOLDS)


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
        self.stores = PartitionStores(settings.state_dir, settings.topics.state)
        friction = load_friction(settings.friction_path)
        self.models = ModelWatch(settings.model_path, friction.version)
        contact_models = ModelWatch(settings.contact_model_path, friction.version, "contact")
        rules = RulebookWatch(settings.rules_path)
        self.engine = ScoringEngine(
            churn=self.models.load_first(),
            contact=contact_models.load_first(),
            feature_rows=settings.feature_row_share,
            friction=friction,
            rulebook=rules.book,
            decode=settings.decode_settings(),
            stores=self.stores,
            clock=clock,
            idle_ttl_seconds=settings.idle_ttl_days * 86400,
        )
        t = settings.topics
        self.gate = ProfileGate(
            t.journey_events, t.customer_profiles, max_wait_seconds=settings.profile_wait_seconds
        )
        self.outputs = OutputTopics(
            t.actions, t.decisions, t.dlq, t.state, t.milestones, t.feature_rows,
            cloudevents=settings.actions_format == "cloudevents",
        )  # fmt: skip
        self.limits = Limits(settings.max_record_bytes)
        self._stop = threading.Event()
        self.committer = Committer(settings, self.health, self.metrics, self._stop, self.limits)
        self._to_restore: set[int] = set()
        self.membership = AssignmentWatch(settings.rejoin_after_seconds)
        self._http: ThreadingHTTPServer | None = None
        self._batch_limit = BatchLimit(settings.batch_size, settings.catch_up_batch_size)
        self.batches = 0
        self.records = 0
        #: seconds spent in each phase of the committed batches (``BATCH_PHASES``)
        self.phase_seconds: Counter[str] = Counter()
        #: seconds from the last assignment to the first batch committed after it
        self.ready_after_assignment: float | None = None
        self._assigned_at: float | None = None
        self.restores: list[RestoreResult] = []
        self._learning_missing = False
        self.reloads = Reloads(self.engine, self.models, contact_models, rules, self.metrics)

    def stop(self) -> None:
        """Ask the loop to finish its current batch and exit."""
        self._stop.set()

    def serve_http(self, host: str, port: int) -> None:
        """``/metrics``, ``/healthz`` and ``/readyz`` on ``host:port`` until the worker stops."""
        self._http = self.metrics.serve(host, port, self.health)

    # -- rebalances: no transaction is open while these run (see the module docstring) --

    def _events_partitions(self, partitions: list[TopicPartition]) -> set[int]:
        events = self.settings.topics.journey_events
        return {tp.partition for tp in partitions if tp.topic == events}

    def _on_assign(self, _consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.gate.on_assign(partitions)
        mine = self._events_partitions(partitions)
        # Eager (range) assignment hands over the whole new assignment at once: stores of
        # partitions that went elsewhere are dropped; kept ones catch up from their checkpoint.
        self.stores.keep_only(mine)
        self.health.assigned = mine
        self._to_restore = set(mine)
        self.health.restoring = set(mine)
        self._assigned_at = time.monotonic() if mine else None
        self.membership.assigned(mine)
        if mine:
            self.health.failing = None
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
        self.membership.lost()
        self.metrics.partitions_gone(gone)
        self.metrics.partitions.set(len(self.health.assigned))
        self.metrics.rebalances.labels(kind).inc()
        log.info("%s partitions %s", kind, sorted(gone))

    def _subscribe(self) -> Consumer:
        s = self.settings
        consumer = Consumer(kafka_config(s, "scoring_consumer"))
        consumer.subscribe(
            [s.topics.journey_events, s.topics.customer_profiles],
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )
        return consumer

    def _watch_assignment(self, consumer: Consumer) -> Consumer:
        """A worker without partitions while records wait unread rejoins its group, then
        fails liveness (``membership.py``); a spare in a working group does nothing."""
        if not self.membership.due():
            return consumer
        verdict = self.membership.observe(
            group_progress(consumer, self.settings.topics.journey_events)
        )
        waited = self.settings.rejoin_after_seconds
        if verdict == "rejoin":
            log.warning(
                "no partitions here while records wait unread and the group's offsets have "
                "not moved for %.0f s: rejoining the consumer group",
                waited,
            )
            self.metrics.rejoins.inc()
            consumer.close()
            return self._subscribe()
        if verdict == "fail":
            why = "records wait unread and this worker has no partitions, even after rejoining"
            if self.health.failing is None:
                log.error("%s: failing liveness so that the process is restarted", why)
            self.health.failing = why
        return consumer

    # -- state --

    def _restore(self, restorer: Consumer) -> None:
        """Restore the partitions waiting for it, together; what cannot be restored now (the
        broker does not answer) waits for the next turn of the loop."""
        waiting = sorted(self._to_restore)
        self.metrics.restoring.set(len(waiting))
        checkpoints = {p: self.stores.partition(p).checkpoint for p in waiting}
        try:
            results = restore_partitions(
                restorer,
                self.settings.topics.state,
                {p: self.stores.partition(p) for p in waiting},
                progress=self._restore_progress(),
                stopping=self._stop.is_set,
            )
        except (KafkaException, RestoreStalled) as e:
            log.warning("restoring partitions %s must wait: %s", waiting, e)
            return
        if results is None:  # stopping
            return
        for result in results:
            p = result.partition
            if checkpoints[p] is not None and result.from_checkpoint is None:
                self.metrics.changelog_resets.inc()
            self._to_restore.discard(p)
            self.health.restoring.discard(p)
            self.restores.append(result)
            log.info(
                "restored partition %d: %d changelog records from offset %s, %d customers",
                p,
                result.records,
                "start" if result.from_checkpoint is None else result.from_checkpoint,
                result.customers,
            )
        if results:
            self.metrics.restore_seconds.observe(results[0].seconds)
            log.info("restored %d partitions in %.2f s", len(results), results[0].seconds)
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
        """Undo a batch that was not committed: its state writes and its stream time."""
        for p in partitions:
            store = self.stores.stores.get(p)
            if store is not None:
                store.discard()

    # -- one batch --

    def _process(self, records: list[RawRecord]) -> BatchResult:
        topic = self.settings.topics.journey_events
        events = [r for r in records if r.topic == topic]
        profiles = [r for r in records if r.topic != topic]
        result, failed = process_isolating(self.engine, events, profiles)
        if failed:
            log.error(
                "scoring raised on a batch of %d records: %d failed passes isolated %d "
                "record(s) into the DLQ as processing_error",
                len(records),
                failed,
                result.stats.dead_letters_by_reason["processing_error"],
            )
            self.metrics.isolations.inc()
        return result

    def _encode(self, result: BatchResult) -> dict[int, Encoded]:
        encoded: dict[int, Encoded] = {}
        for c in result.changes:
            value = None if c.state is None else encode_state(c.state)
            encoded.setdefault(c.partition, {})[c.customer_id] = value
            if value is not None:
                self.metrics.state_bytes.observe(len(value))
        for p, records in result.partition_records.items():  # the volume thresholds
            encoded.setdefault(p, {}).update(records)
        return encoded

    def _publish(self, consumer: Consumer, records: list[RawRecord], result: BatchResult) -> bool:
        """Publish the batch and commit its offsets; False when it must be read again."""
        started = time.perf_counter()
        encoded = self._encode(result)
        out = batch_records(result, encoded, self.outputs, self.limits, datetime.now(UTC))
        encoding = time.perf_counter()
        try:
            committed = self.committer.commit(consumer, records, out.records)
        except ProducerFailed as e:
            self.committer.restart(str(e))
            committed = False
        phases = result.stats.phase_seconds
        phases["encode"], phases["commit"] = encoding - started, time.perf_counter() - encoding
        if not committed:
            self._rollback({r.partition for r in records})
            rewind(consumer, records)
            return False
        for p in {r.partition for r in records} | set(encoded):
            self.stores.partition(p).commit(
                encoded.get(p, {}), self.committer.changelog_next.get(p)
            )
        return True

    def _between_batches(self, client: Consumer) -> None:
        """Changed models and rulebooks, new learned releases, learning topics created."""
        self.reloads.check(self._stream_time())
        if self.outputs.learning_partitions is None:
            self._find_learning_topics(client)

    def _observe_lag(self, consumer: Consumer) -> None:
        """Consumer lag per owned partition, from the watermarks the fetches carried (no
        request to the broker: the embedded one misreports a queried end, §16)."""
        topic = self.settings.topics.journey_events
        owned = [TopicPartition(topic, p) for p in sorted(self.health.assigned)]
        if not owned:
            return
        try:
            positions = consumer.position(owned)
        except KafkaException:
            return
        for tp in positions:
            _, high = consumer.get_watermark_offsets(tp, cached=True)
            if high >= 0 and tp.offset >= 0:
                self.metrics.consumer_lag.labels(str(tp.partition)).set(max(0, high - tp.offset))

    def _find_learning_topics(self, client: Consumer) -> None:
        """Where milestones and feature rows go; until their topics exist, nothing is
        published to them (a batch producing to a missing topic would fail for good)."""
        t = self.settings.topics
        try:
            have = existing_partitions(client)
        except KafkaException:
            have = {}
        m, f = have.get(t.milestones), have.get(t.feature_rows)
        found = (m, f) if m and f else None
        if found is None and not self._learning_missing:
            log.error(
                "no topics %s and %s: milestones and feature rows are not published, so "
                "nothing is learned (forewarn topics create); looking again every %.0f s",
                t.milestones, t.feature_rows, self.settings.reload_check_seconds,
            )  # fmt: skip
        self._learning_missing = found is None
        self.outputs = replace(self.outputs, learning_partitions=found)

    def _stream_time(self) -> float:
        """The furthest stream time this worker's partitions reached."""
        return max((st.stream_time for st in self.stores.stores.values()), default=-math.inf)

    def _read(self, consumer: Consumer) -> list[RawRecord]:
        records = read_batch(
            consumer, self._batch_limit.limit, self.settings.batch_timeout_seconds, self.metrics
        )
        self._batch_limit.after_read(records_waiting(consumer, records) if records else 0)
        return records

    def _find_profile_ends(self, consumer: Consumer, restorer: Consumer) -> None:
        """Tell the gate how far each newly assigned profiles partition must be read."""
        topic = self.settings.topics.customer_profiles
        wanted = sorted(self.gate.ends_wanted())
        try:
            ends = partition_ends(restorer, topic, wanted, stopping=self._stop.is_set)
            if ends is None:  # stopping
                return
            committed = consumer.committed([TopicPartition(topic, p) for p in wanted], timeout=10)
        except (KafkaException, RestoreStalled) as e:
            log.warning("finding where partitions %s's profiles end must wait: %s", wanted, e)
            return
        for tp in committed:
            self.gate.read_to(tp.partition, ends[tp.partition], tp.offset)

    def run(self) -> None:
        """Score until stopped. ``BrokerUnreachable`` when Kafka does not answer at start."""
        s = self.settings
        tune_garbage_collector()
        if not self.committer.start(deadline=time.monotonic() + s.startup_timeout_seconds):
            return  # stopped while waiting for Kafka
        if s.learned_models:
            self.reloads.read_learned(
                LearnedModels(s, self.engine.friction.version), self._stream_time()
            )
        consumer = self._subscribe()
        restorer = Consumer(kafka_config(s, "restore"))
        self._find_learning_topics(restorer)
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
        self.metrics.rulebook_in_use(None, self.engine.rulebook.version)
        next_check = time.monotonic() + s.reload_check_seconds
        try:
            while not self._stop.is_set():
                self.health.beat()
                if time.monotonic() >= next_check:  # between batches, never inside one
                    next_check = time.monotonic() + s.reload_check_seconds
                    self._between_batches(restorer)
                    self._observe_lag(consumer)
                consumer = self._watch_assignment(consumer)
                reading = time.perf_counter()
                records = self._read(consumer)
                started = time.perf_counter()
                if self._to_restore:
                    self._restore(restorer)
                    records = self._hold_unrestored(consumer, records)
                if self.gate.ends_wanted():
                    self._find_profile_ends(consumer, restorer)
                if self.gate.holding:
                    records = self.gate.filter(consumer, records)
                if not records:
                    continue
                result = self._process(records)
                result.stats.phase_seconds["read"] = started - reading
                if not self._publish(consumer, records, result):
                    continue
                self.batches += 1
                self.records += len(records)
                self.phase_seconds.update(result.stats.phase_seconds)
                if self._assigned_at is not None:
                    self._ready(time.monotonic() - self._assigned_at)
                self.metrics.observe_batch(result, len(records), time.perf_counter() - started)
                self.metrics.customers.set(self.stores.customers())
        finally:
            self.health.running = False
            self.metrics.up.set(0)
            self.committer.close()
            consumer.close()
            restorer.close()
            self.reloads.close()
            self.stores.close()
            if self._http is not None:
                self._http.shutdown()
                self._http.server_close()
            log.info("stopped after %d batches, %d records", self.batches, self.records)

    def _ready(self, seconds: float) -> None:
        self._assigned_at, self.ready_after_assignment = None, seconds
        self.metrics.ready_after_assignment.set(seconds)
        log.info("first batch committed %.2f s after the assignment", seconds)

    def _hold_unrestored(self, consumer: Consumer, records: list[RawRecord]) -> list[RawRecord]:
        """Records of partitions still restoring go back to be read again later."""
        if not self._to_restore:
            return records
        waiting = [r for r in records if r.partition in self._to_restore]
        if waiting:
            rewind(consumer, waiting)
        return [r for r in records if r.partition not in self._to_restore]
