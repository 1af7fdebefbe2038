"""``forewarn deliver``: reads outreach actions (its own consumer group, ``read_committed``)
and sends each to the destinations that match it, as signed webhooks.

Per turn of the loop: read a batch of actions; decide for each (action, destination) whether
it is expired, held until its ``not_before``, or due; add the held ones that have come due;
send the due ones concurrently (a paused destination's wait instead); then publish, in one
Kafka transaction with the batch's offsets, everything the turn settled: outcomes
(``delivered``, ``failed``, ``expired``), dead letters (with the destination's last answer),
and the held-deliveries records (a new hold, or a tombstone for one settled).

Held actions live in memory (a heap by due time) and in the compacted held-deliveries topic,
partition by partition beside the actions topic: a partition's new owner reads its held
partition back before it reads the actions (docs/decisions.md, "Holding deferred actions").
An HTTP request is a side effect no transaction covers: a deliverer killed after a request
and before its commit sends that request again, with the same ``webhook-id``, and the
receiver drops the repeat.

SIGTERM or SIGINT: finish the turn, commit, close, exit 0.
"""

from __future__ import annotations

import base64
import heapq
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import ThreadingHTTPServer
from typing import Any, cast

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition
from pydantic import ValidationError

from forewarn.delivery.config import Destination, DestinationBook
from forewarn.delivery.policy import (
    BreakerState,
    CircuitBreaker,
    Verdict,
    backoff,
    retry_after,
    timing,
    verdict,
)
from forewarn.delivery.request import RenderError, build_request
from forewarn.errors import ForewarnError
from forewarn.models.contracts import (
    DeadLetter,
    DeadLetterReason,
    DeliveryFailure,
    HeldDelivery,
    Outcome,
    OutcomeKind,
    OutreachAction,
)
from forewarn.pipeline.codecs import RawRecord, encode
from forewarn.streams.delivery.http import Answer, HttpSender
from forewarn.streams.http import Health
from forewarn.streams.metrics import DeliveryMetrics, ScoringMetrics
from forewarn.streams.scoring.commit import Committer
from forewarn.streams.scoring.outputs import Limits, OutputRecord
from forewarn.streams.scoring.reading import rewind, to_raw
from forewarn.streams.settings import Settings, kafka_config
from forewarn.streams.topics import existing_partitions

log = logging.getLogger("forewarn.deliver")


class TopicsMissing(ForewarnError):
    """A topic the deliverer needs is missing or too small: the environment's to fix."""

    exit_code = 1


_BREAKER_VALUE = {BreakerState.closed: 0, BreakerState.open: 1, BreakerState.half_open: 2}
#: a held action for a destination whose trial request is out waits this long, then looks again
_TRIAL_WAIT = timedelta(seconds=1)


def held_key(destination: str, action_id: str) -> str:
    return f"{destination}/{action_id}"


@dataclass(slots=True)
class _Job:
    destination: Destination
    action: OutreachAction
    partition: int
    offset: int
    attempts: int
    #: it has a held record (a tombstone settles it)
    held: bool
    #: when the deliverer read it, or took it from the held ones (added latency)
    taken: float = field(default_factory=time.perf_counter)

    @property
    def key(self) -> str:
        return held_key(self.destination.name, self.action.action_id)


@dataclass(slots=True)
class _Turn:
    """What one turn settles; published together, applied once committed."""

    out: list[OutputRecord] = field(default_factory=list)
    #: key -> the new hold, or None (settled: a tombstone)
    changes: dict[str, HeldDelivery | None] = field(default_factory=dict)
    taken_from_heap: list[str] = field(default_factory=list)
    results: list[tuple[str, str]] = field(default_factory=list)
    delivered: list[tuple[str, float, float]] = field(default_factory=list)


class DeliveryWorker:
    def __init__(
        self,
        settings: Settings,
        book: DestinationBook,
        *,
        clock: Callable[[], datetime] | None = None,
        rand: Callable[[], float] | None = None,
        metrics: DeliveryMetrics | None = None,
    ) -> None:
        cfg = settings.delivery
        # the transactional id is the deliverer's group and instance: a restarted deliverer
        # fences its previous incarnation and aborts what it left open
        self.settings = settings.model_copy(update={"group_id": cfg.group_id})
        self.cfg = cfg
        self.book = book
        self.clock = clock or (lambda: datetime.now(UTC))
        self.rand = rand or random.Random().random
        self.metrics = metrics or DeliveryMetrics()
        self.metrics.destinations([d.name for d in book.destinations])
        self.health = Health(settings.liveness_timeout_seconds)
        self._stop = threading.Event()
        self.committer = Committer(
            self.settings,
            self.health,
            cast(ScoringMetrics, self.metrics),  # the same three Kafka counters, its own names
            self._stop,
            Limits(settings.max_record_bytes),
        )
        self.breakers = {
            d.name: CircuitBreaker(
                cfg.breaker_failures, timedelta(seconds=cfg.breaker_cooldown_seconds), self.clock
            )
            for d in book.destinations
        }
        self.held: dict[str, HeldDelivery] = {}
        self._heap: list[tuple[float, str]] = []
        self._http: ThreadingHTTPServer | None = None
        #: seconds from reading (or taking up) an action to its delivery, for the benchmark
        self.added_latency: list[float] | None = None

    # -- lifecycle --

    def stop(self) -> None:
        self._stop.set()

    def serve_http(self, host: str, port: int) -> None:
        self._http = self.metrics.serve(host, port, self.health)

    def run(self) -> None:
        s = self.settings
        deadline = time.monotonic() + s.startup_timeout_seconds
        if not self.committer.start(deadline):
            return
        consumer = Consumer(kafka_config(s, "consumer"))
        try:
            self._check_topics(consumer)
        except BaseException:
            consumer.close()
            self.committer.close()
            raise
        sender = HttpSender(self.cfg.concurrency)
        consumer.subscribe([s.topics.actions], on_assign=self._assigned, on_revoke=self._revoked,
                           on_lost=self._revoked)  # fmt: skip
        self.metrics.up.set(1)
        try:
            while not self._stop.is_set():
                self.health.beat()
                self._turn(consumer, sender)
        finally:
            self.metrics.up.set(0)
            self.health.running = False
            consumer.close()
            self.committer.close()
            sender.close()
            if self._http is not None:
                self._http.shutdown()

    def _check_topics(self, consumer: Consumer) -> None:
        """The topics the deliverer writes exist, and the held topic has a partition for
        every actions partition (``TopicsMissing`` otherwise: exit code 1)."""
        t = self.settings.topics
        have = existing_partitions(consumer, self.settings.startup_timeout_seconds)
        missing = [n for n in (t.actions, t.delivery_held, t.outcomes, t.delivery_dlq)
                   if n not in have]  # fmt: skip
        if missing:
            raise TopicsMissing(
                f"topics missing: {', '.join(missing)}; run `forewarn topics create`"
            )
        if have[t.delivery_held] < have[t.actions]:
            raise TopicsMissing(
                f"{t.delivery_held} has {have[t.delivery_held]} partitions, fewer than "
                f"{t.actions}'s {have[t.actions]}: give it as many (partition p holds what the "
                "owner of actions partition p holds)"
            )

    # -- partitions --

    def _assigned(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        ps = {tp.partition for tp in partitions}
        self.health.restoring |= ps
        for p in sorted(ps):
            self._restore(p)
            self.health.restoring.discard(p)
        self.health.assigned |= ps
        self._held_gauges()

    def _revoked(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        ps = {tp.partition for tp in partitions}
        for key in [k for k, h in self.held.items() if h.source_partition in ps]:
            del self.held[key]  # the partition's next owner reads them back
        self.health.assigned -= ps
        self._held_gauges()

    def _restore(self, p: int) -> None:
        """Read held-deliveries partition ``p`` to its end: what this partition holds."""
        s = self.settings
        topic = s.topics.delivery_held
        reader = Consumer(kafka_config(s, "restore", **{"group.id": f"{s.group_id}-restore"}))
        reader.assign([TopicPartition(topic, p, OFFSET_BEGINNING)])
        latest: dict[str, HeldDelivery | None] = {}
        stalled = time.monotonic() + 60
        try:
            while time.monotonic() < stalled:
                self.health.beat()
                messages = reader.consume(1000, 0.5)
                ended = False
                for m in messages:
                    err = m.error()
                    if err is not None:
                        if err.code() == KafkaError._PARTITION_EOF:
                            ended = True
                        continue
                    stalled = time.monotonic() + 60
                    raw_key = m.key()
                    name = raw_key.decode() if isinstance(raw_key, bytes) else str(raw_key)
                    value = m.value()
                    if value is None:
                        latest[name] = None
                        continue
                    try:
                        latest[name] = HeldDelivery.model_validate_json(value)
                    except ValidationError as e:
                        log.warning("held-deliveries %d@%d unreadable, skipped: %s", p,
                                    m.offset() or 0, e.errors()[0]["msg"])  # fmt: skip
                if ended:
                    break
            else:
                raise RuntimeError(f"reading {topic} partition {p} stalled for 60 s")
        finally:
            reader.close()
        names = {d.name for d in self.book.destinations}
        restored = 0
        for key, h in latest.items():
            if h is None:
                continue
            if h.destination not in names:
                log.warning("held action %s names destination %r, no longer in the file: "
                            "dropped", h.action.action_id, h.destination)  # fmt: skip
                continue
            self._hold(key, h)
            restored += 1
        log.info("partition %d: %d held actions read back", p, restored)

    def _hold(self, key: str, h: HeldDelivery) -> None:
        self.held[key] = h
        heapq.heappush(self._heap, (h.due_at.timestamp(), key))

    def _held_gauges(self) -> None:
        counts = {"not_before": 0, "retry": 0, "paused": 0}
        for h in self.held.values():
            counts[h.reason] += 1
        for reason, n in counts.items():
            self.metrics.held.labels(reason).set(n)

    # -- one turn --

    def _wait(self) -> float:
        wait = self.settings.batch_timeout_seconds
        while self._heap:
            due, key = self._heap[0]
            h = self.held.get(key)
            if h is None or h.due_at.timestamp() != due:  # settled or moved: a stale entry
                heapq.heappop(self._heap)
                continue
            wait = min(wait, max(0.0, due - self.clock().timestamp()))
            break
        return wait

    def _turn(self, consumer: Consumer, sender: HttpSender) -> None:
        size = self.cfg.batch_size
        messages = consumer.consume(size, self._wait())
        records: list[RawRecord] = []
        for m in messages:
            err = m.error()
            if err is None:
                records.append(to_raw(m))
            elif err.code() != KafkaError._PARTITION_EOF:
                log.warning("consume error: %s", err)
        now = self.clock()
        turn = _Turn()
        jobs: list[_Job] = []
        for rec in records:
            jobs += self._read(rec, now, turn)
        jobs += self._due(now, turn, max(size - len(jobs), 1))
        if not records and not turn.out and not jobs:
            return
        self._send(jobs, sender, turn)
        for key, change in turn.changes.items():
            h = change if change is not None else self.held.get(key)
            if h is None:
                continue
            turn.out.append(OutputRecord(self.settings.topics.delivery_held, key.encode(),
                                         None if change is None else encode(change),
                                         h.source_partition))  # fmt: skip
        if not self._commit(consumer, records, turn.out):
            rewind(consumer, records)
            for key in turn.taken_from_heap:  # still held: tried again next turn
                h = self.held.get(key)
                if h is not None:
                    heapq.heappush(self._heap, (h.due_at.timestamp(), key))
            return
        for key, change in turn.changes.items():
            if change is None:
                self.held.pop(key, None)
            else:
                self._hold(key, change)
        for destination, result in turn.results:
            self.metrics.deliveries.labels(destination, result).inc()
        for destination, delay, added in turn.delivered:
            self.metrics.delay_seconds.labels(destination).observe(delay)
            if self.added_latency is not None:
                self.added_latency.append(added)
        self._held_gauges()

    def _commit(
        self, consumer: Consumer, records: list[RawRecord], out: list[OutputRecord]
    ) -> bool:
        if not records:
            # nothing read: the offsets stay; commit what the turn settled on its own
            records = self._positions(consumer)
        return self.committer.commit(consumer, records, out)

    def _positions(self, consumer: Consumer) -> list[RawRecord]:
        """The group's current position as records (the offsets to commit stay where they
        are): a transaction that carries held actions alone still commits offsets."""
        out = []
        for tp in consumer.position(consumer.assignment()):
            if tp.offset > 0:
                out.append(RawRecord(tp.topic, tp.partition, tp.offset - 1, None, None))
        return out

    def _read(self, rec: RawRecord, now: datetime, turn: _Turn) -> list[_Job]:
        try:
            action = OutreachAction.model_validate_json(rec.value or b"")
        except ValidationError as e:
            self.metrics.unreadable.inc()
            reason = (
                DeadLetterReason.malformed_json
                if any(err["type"] == "json_invalid" for err in e.errors())
                else DeadLetterReason.schema_violation
            )
            self._dead_letter(turn, rec.partition, rec.offset, rec.key, rec.value, reason,
                              str(e)[:2000], None)  # fmt: skip
            return []
        jobs = []
        for d in self.book.matching(action):
            key = held_key(d.name, action.action_id)
            if key in self.held or key in turn.changes:
                continue  # held already: read again after a restart or an abort
            t = timing(action.not_before, action.expires_at, now)
            if t.kind == "expired":
                self._settle(turn, d.name, action, OutcomeKind.expired, now, None)
            elif t.kind == "hold" and t.until is not None:
                turn.changes[key] = HeldDelivery(
                    destination=d.name, action=action, due_at=t.until, reason="not_before",
                    source_partition=rec.partition, source_offset=rec.offset,
                )  # fmt: skip
            else:
                jobs.append(_Job(d, action, rec.partition, rec.offset, 0, held=False))
        return jobs

    def _due(self, now: datetime, turn: _Turn, at_most: int) -> list[_Job]:
        by_name = {d.name: d for d in self.book.destinations}
        jobs: list[_Job] = []
        stamp = now.timestamp()
        while self._heap and len(jobs) < at_most and self._heap[0][0] <= stamp:
            due, key = heapq.heappop(self._heap)
            h = self.held.get(key)
            if h is None or h.due_at.timestamp() != due or key in turn.changes:
                continue
            turn.taken_from_heap.append(key)
            jobs.append(_Job(by_name[h.destination], h.action, h.source_partition,
                             h.source_offset, h.attempts, held=True))  # fmt: skip
        return jobs

    def _send(self, jobs: list[_Job], sender: HttpSender, turn: _Turn) -> None:
        now = self.clock()
        sending: list[_Job] = []
        requests = []
        for job in jobs:
            name = job.destination.name
            t = timing(job.action.not_before, job.action.expires_at, now)
            if t.kind == "expired":
                self._settle(turn, name, job.action, OutcomeKind.expired, now, job)
                continue
            breaker = self.breakers[name]
            if not breaker.allow():
                resume = breaker.resumes_at()
                due = resume if resume > now else now + _TRIAL_WAIT
                turn.changes[job.key] = self._held(job, due, "paused", None)
                continue
            try:
                request = build_request(job.action, job.destination, now)
            except RenderError as e:
                failure = DeliveryFailure(
                    destination=name, attempts=job.attempts, error=str(e)[:1024]
                )
                self._give_up(turn, job, DeadLetterReason.delivery_unrenderable, failure, now)
                continue
            sending.append(job)
            requests.append((request, job.destination.timeout_seconds))
        answers = sender.send_all(requests)
        now = self.clock()
        for job, answer in zip(sending, answers, strict=True):
            self._answered(turn, job, answer, now)
        for name, breaker in self.breakers.items():
            self.metrics.breaker.labels(name).set(_BREAKER_VALUE[breaker.state])

    def _answered(self, turn: _Turn, job: _Job, answer: Answer, now: datetime) -> None:
        name = job.destination.name
        m = self.metrics
        m.attempts.labels(name, answer.status_class).inc()
        m.request_seconds.labels(name).observe(answer.seconds)
        attempts = job.attempts + 1
        v = verdict(answer.status)
        self.breakers[name].record(v is not Verdict.retry)
        if v is Verdict.delivered:
            self._settle(turn, name, job.action, OutcomeKind.delivered, now, job,
                         f"HTTP {answer.status}, attempt {attempts}")  # fmt: skip
            start = max(job.action.decided_at, job.action.not_before or job.action.decided_at)
            turn.delivered.append((name, max(0.0, (now - start).total_seconds()),
                                   time.perf_counter() - job.taken))  # fmt: skip
            return
        failure = DeliveryFailure(destination=name, attempts=attempts, status=answer.status,
                                  error=answer.error, response_body=answer.body)  # fmt: skip
        if v is Verdict.rejected:
            self._give_up(turn, job, DeadLetterReason.delivery_rejected, failure, now)
            return
        if attempts >= self.cfg.max_attempts:
            self._give_up(turn, job, DeadLetterReason.delivery_exhausted, failure, now)
            return
        wait = backoff(attempts, self.cfg.backoff_seconds, self.cfg.backoff_max_seconds,
                       self.rand, retry_after(answer.retry_after, now),
                       self.cfg.retry_after_max_seconds)  # fmt: skip
        m.retries.labels(name).inc()
        job.attempts = attempts
        turn.changes[job.key] = self._held(job, now + timedelta(seconds=wait), "retry", answer)

    def _held(self, job: _Job, due: datetime, reason: Any, answer: Answer | None) -> HeldDelivery:
        return HeldDelivery(
            destination=job.destination.name, action=job.action, due_at=due,
            attempts=job.attempts, reason=reason, source_partition=job.partition,
            source_offset=job.offset, last_status=None if answer is None else answer.status,
            last_error=None if answer is None else answer.error,
        )  # fmt: skip

    # -- what a turn publishes --

    def _settle(self, turn: _Turn, name: str, action: OutreachAction, kind: OutcomeKind,
                now: datetime, job: _Job | None, detail: str | None = None) -> None:  # fmt: skip
        outcome = Outcome(action_id=action.action_id, customer_id=action.customer_id, kind=kind,
                          at=now, source=name, detail=detail)  # fmt: skip
        turn.out.append(OutputRecord(self.settings.topics.outcomes,
                                     action.customer_id.encode(), encode(outcome)))  # fmt: skip
        turn.results.append((name, "failed" if kind is OutcomeKind.failed else kind.value))
        if job is not None and job.held:
            turn.changes[job.key] = None

    def _give_up(self, turn: _Turn, job: _Job, reason: DeadLetterReason,
                 failure: DeliveryFailure, now: datetime) -> None:  # fmt: skip
        what = f"HTTP {failure.status}" if failure.status is not None else failure.error
        self._dead_letter(turn, job.partition, job.offset, job.action.customer_id.encode(),
                          job.action.model_dump_json().encode(), reason,
                          f"{job.destination.name}: {what} after {failure.attempts} attempts",
                          failure)  # fmt: skip
        self._settle(turn, job.destination.name, job.action, OutcomeKind.failed, now, job,
                     f"{reason.value}: {what}"[:1024])  # fmt: skip

    def _dead_letter(self, turn: _Turn, partition: int, offset: int, key: bytes | None,
                     value: bytes | None, reason: DeadLetterReason, detail: str,
                     failure: DeliveryFailure | None) -> None:  # fmt: skip
        dl = DeadLetter(
            source_topic=self.settings.topics.actions, partition=partition, offset=offset,
            key_base64=None if key is None else base64.b64encode(key).decode(),
            value_base64=None if value is None else base64.b64encode(value[:65536]).decode(),
            error_type=reason, error_detail=detail, failed_at=self.clock(),
            original_bytes=len(key or b"") + len(value or b""), delivery=failure,
        )  # fmt: skip
        turn.out.append(OutputRecord(self.settings.topics.delivery_dlq, key, encode(dl)))
