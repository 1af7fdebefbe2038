"""Publish simulated journeys to Kafka.

Live runs replay a compressed stretch of simulated time that *ends now*: the simulated
period is sized so that ``customers`` produce about ``rate * duration`` events, and it
starts that long before the run starts, so no event is stamped in the future. A share of
events is published as CloudEvents (binary and structured mode) to exercise decoding, and
``bad_rate`` mixes in malformed records of every kind the dead-letter topic knows.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from confluent_kafka import OFFSET_END, Consumer, KafkaError, Message, Producer, TopicPartition

from forewarn.errors import ForewarnError
from forewarn.models.contracts import CustomerProfile, JourneyEvent, OutreachAction
from forewarn.offline.response import TRUE_EFFECTS, Responder, TrueEffect
from forewarn.offline.samples import (
    BAD_KINDS,
    as_cloudevent_binary,
    as_cloudevent_structured,
    bad_record,
)
from forewarn.offline.simulator import JourneySimulator, span_for
from forewarn.offline.worlds import OURS, World
from forewarn.pipeline.codecs import Headers, encode
from forewarn.streams.settings import Settings, kafka_config
from forewarn.streams.topics import existing_partitions, reach, require


class DeliveryFailed(ForewarnError):
    """Records were produced but Kafka did not take them all: the environment's to fix."""

    exit_code = 1


@dataclass(slots=True)
class Deliveries:
    """What Kafka acknowledged of one producer's records (its delivery reports)."""

    what: str
    bootstrap: str
    delivered: int = 0
    failed: int = 0
    first_error: KafkaError | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def report(self, err: KafkaError | None, _msg: Message) -> None:
        with self.lock:
            if err is None:
                self.delivered += 1
                return
            self.failed += 1
            if self.first_error is None:
                self.first_error = err

    def producer(self, settings: Settings, **overrides: object) -> Producer:
        return Producer(kafka_config(settings, "producer", on_delivery=self.report, **overrides))

    def check(self, producer: Producer, timeout: float = 30.0) -> None:
        """Wait for what is queued; ``DeliveryFailed`` saying what was lost, if anything."""
        queued = producer.flush(timeout)
        lost = self.failed + queued
        if lost:
            total = self.delivered + lost
            why = f": {self.first_error.str()}" if self.first_error is not None else ""
            waiting = f" ({queued:,} still queued after {timeout:g} s)" if queued else ""
            raise DeliveryFailed(
                f"{lost:,} of {total:,} {self.what} were not delivered to Kafka at "
                f"{self.bootstrap}{waiting}{why}"
            )


@dataclass(slots=True)
class PublishStats:
    events: int = 0
    profiles: int = 0
    bad: Counter[str] = field(default_factory=Counter)
    by_type: Counter[str] = field(default_factory=Counter)
    #: (customer id, time) of every simulated support contact: the ground truth
    support_contacts: list[tuple[str, datetime]] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    #: with ``respond``: actions received, outcomes reported, events the actions prevented
    actions_received: int = 0
    outcomes_reported: int = 0
    prevented: Counter[str] = field(default_factory=Counter)


class RespondingCustomers:
    """The live closed loop: reads the actions the workers publish, lets the simulated
    customers respond to them (``offline/response.py``) and the simulated marketing tool
    report outcomes on the outcomes topic.

    An action reaches its customer when the simulator reads it, so events published in
    the worker's latency (about a second, an hour or so of simulated time) are not
    prevented: the live effect is smaller than the truth per action.
    """

    def __init__(self, settings: Settings, responder: Responder | None = None) -> None:
        self.responder = responder or Responder()
        self.topics = settings.topics
        self.consumer = Consumer(
            kafka_config(
                settings,
                "consumer",
                **{
                    "group.id": f"forewarn-simulator-{uuid.uuid4().hex[:8]}",
                    "enable.partition.eof": False,
                },
            )
        )
        parts = existing_partitions(self.consumer).get(self.topics.actions, 0)
        self.consumer.assign(
            [TopicPartition(self.topics.actions, p, OFFSET_END) for p in range(parts)]
        )
        self.deliveries = Deliveries("outcome records", settings.bootstrap_servers)
        self.producer = self.deliveries.producer(settings)
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.actions = self.outcomes = 0
        self.thread = threading.Thread(target=self._run, name="responding-customers", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stopping.is_set():
            for m in self.consumer.consume(500, 0.2):
                if m.error() is not None:
                    continue
                try:
                    action = OutreachAction.model_validate_json(m.value() or b"")
                except ValueError:
                    continue
                with self.lock:
                    self.responder.treat(action)
                    self.actions += 1
                for o in self.responder.outcomes(action):
                    produce_record(self.producer, self.topics.outcomes, o.customer_id.encode(),
                                   encode(o))  # fmt: skip
                    self.outcomes += 1

    def keeps(self, event: JourneyEvent) -> bool:
        with self.lock:
            return self.responder.keeps(event)

    def close(self, stats: PublishStats) -> None:
        self.stopping.set()
        self.thread.join(timeout=10)
        self.consumer.close()
        stats.actions_received, stats.outcomes_reported = self.actions, self.outcomes
        stats.prevented.update(self.responder.prevented)
        self.deliveries.check(self.producer)


def publish_live(
    settings: Settings,
    *,
    customers: int,
    rate: float,
    duration: float,
    seed: int,
    bad_rate: float = 0.0,
    cloudevents_share: float = 0.2,
    stop: threading.Event | None = None,
    on_progress: Callable[[PublishStats], None] | None = None,
    world: World = OURS,
    respond: bool = False,
    effects: dict[str, TrueEffect] | None = None,
) -> PublishStats:
    """Publish profiles, then about ``rate`` events/s for ``duration`` seconds; with
    ``respond``, customers respond to the actions they get (``RespondingCustomers``), with
    ``effects`` per playbook (default: ``TRUE_EFFECTS``)."""
    stop = stop or threading.Event()
    # one line and a quick exit when no broker answers or a topic is missing
    t = settings.topics
    wanted = [t.customer_profiles, t.journey_events] + ([t.actions, t.outcomes] if respond else [])
    require(settings, reach(settings), wanted)
    responder = Responder({**TRUE_EFFECTS, **(effects or {})})
    responding = RespondingCustomers(settings, responder) if respond else None
    stats = PublishStats()
    try:
        _publish(settings, stats, customers, rate, duration, seed, bad_rate, cloudevents_share,
                 stop, on_progress, world, responding)  # fmt: skip
    finally:
        if responding is not None:
            responding.close(stats)
    return stats


def _publish(
    settings: Settings,
    stats: PublishStats,
    customers: int,
    rate: float,
    duration: float,
    seed: int,
    bad_rate: float,
    cloudevents_share: float,
    stop: threading.Event,
    on_progress: Callable[[PublishStats], None] | None,
    world: World,
    responding: RespondingCustomers | None,
) -> None:
    deliveries = Deliveries("records", settings.bootstrap_servers)
    producer = deliveries.producer(settings)
    topics = settings.topics
    span = span_for(int(rate * duration), customers)
    now = datetime.now(UTC)
    sim = JourneySimulator(customers, seed, start=now - span, span=span, world=world)
    for p in sim.profiles():
        producer.produce(topics.customer_profiles, key=p.customer_id.encode(), value=encode(p))
        stats.profiles += 1
        producer.poll(0)
    producer.flush(30)

    rng = random.Random(f"forewarn-publish:{seed}")
    t0 = time.monotonic()
    last_progress = t0
    for e in sim.events():
        elapsed = time.monotonic() - t0
        if stop.is_set() or elapsed >= duration:
            break
        ahead = stats.events / rate - elapsed
        if ahead > 0.01:
            time.sleep(ahead)
        if responding is not None and not responding.keeps(e):
            continue  # an action reached the customer first: this never happens
        r = rng.random()
        if r < cloudevents_share / 2:
            key, value, headers = as_cloudevent_binary(e)
        elif r < cloudevents_share:
            key, value, headers = as_cloudevent_structured(e)
        else:
            key, value, headers = e.customer_id.encode(), encode(e), ()
        produce_record(producer, topics.journey_events, key, value, headers)
        stats.events += 1
        stats.by_type[e.type] += 1
        if e.type == "support_contact":
            stats.support_contacts.append((e.customer_id, e.occurred_at))
        if bad_rate and rng.random() < bad_rate:
            kind = rng.choice(BAD_KINDS)
            produce_record(
                producer, topics.journey_events, *bad_record(kind, datetime.now(UTC), stats.events)
            )
            stats.bad[kind.value] += 1
        if on_progress and time.monotonic() - last_progress >= 1.0:
            last_progress = time.monotonic()
            on_progress(stats)
    deliveries.check(producer)


def publish_backlog(
    settings: Settings, profiles: list[CustomerProfile], events: Iterable[JourneyEvent]
) -> int:
    """Publish profiles, then events, as fast as the broker takes them; the events' count."""
    deliveries = Deliveries("records", settings.bootstrap_servers)
    producer = deliveries.producer(settings, **{"linger.ms": 20})
    topics = settings.topics
    for p in profiles:
        produce_record(producer, topics.customer_profiles, p.customer_id.encode(), encode(p))
    n = 0
    for e in events:
        produce_record(producer, topics.journey_events, e.customer_id.encode(), encode(e))
        n += 1
    deliveries.check(producer, 60)
    return n


def produce_record(
    producer: Producer, topic: str, key: bytes | None, value: bytes | None, headers: Headers = ()
) -> None:
    """Produce one record, waiting for the local queue to drain when it is full."""
    while True:
        try:
            producer.produce(topic, key=key, value=value, headers=list(headers) or None)
            break
        except BufferError:  # local queue full: let it drain
            producer.poll(0.1)
    producer.poll(0)
