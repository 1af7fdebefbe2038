"""``forewarn learn``: the contact-risk model learned from the stream, without a person.

Reads the feature-rows and milestones topics that the scoring workers publish (by assignment,
from the start of what they retain), feeds the pure ``ContactLearner`` and publishes every fit,
accepted or refused, to the compacted models topic, which every scoring worker reads between
batches. Run one learner; a second one would publish the same releases under the same keys.

**The watermark.** Rows mature when every input has reached their horizon: the watermark is
the oldest latest event time among the input partitions, less ``lateness_seconds`` for
records that a slower worker publishes a little later. A partition read to its end that has
stayed there for ``IDLE_SECONDS`` while records kept coming to the others no longer holds it
back (a quiet partition would stop all learning); one that is still being written to does,
so a backfill that runs through days of history in minutes matures the same rows as the live
stream did. A row that arrives behind
the watermark is ignored and counted.

**Restart.** The learner starts from the model history (the models topic): its champion is the
last accepted release and fits up to the last one are not run again; it then reads its inputs
from their start, so what it learns next is what it would have learned without the restart.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from http.server import ThreadingHTTPServer

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicPartition
from pydantic import ValidationError

from forewarn.errors import ForewarnError
from forewarn.models.contracts import FeatureRow, Milestone
from forewarn.models.friction import load_friction
from forewarn.models.releases import ModelRelease
from forewarn.pipeline.learner import ContactLearner
from forewarn.streams.http import Health, serve_http
from forewarn.streams.metrics import LearnerMetrics
from forewarn.streams.settings import Settings, kafka_config
from forewarn.streams.topics import existing_partitions

log = logging.getLogger("forewarn.learn")


class LearnerFailed(ForewarnError):
    """The learner cannot go on (its inputs do not exist, or a release cannot be published):
    the environment must be fixed, exit code 1."""

    exit_code = 1


#: wall-clock seconds a partition read to its end waits before it stops holding the
#: watermark back
IDLE_SECONDS = 10.0


def watermark(last: dict[tuple[str, int], float], idle: set[tuple[str, int]]) -> float:
    """The stream time every input partition has reached, ``idle`` ones aside (see the
    module docstring).

    >>> watermark({("rows", 0): 100.0, ("rows", 1): 50.0}, {("rows", 1)})
    100.0
    """
    behind = [t for tp, t in last.items() if tp not in idle]
    if behind:
        return min(behind)
    return max(last.values(), default=-math.inf)


class LearnerWorker:
    def __init__(self, settings: Settings, metrics: LearnerMetrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics or LearnerMetrics()
        self.health = Health(settings.liveness_timeout_seconds, ready_without_work=True)
        friction = load_friction(settings.friction_path)
        self.learner = ContactLearner(settings.learner.learner_settings(friction.version))
        self._stop = threading.Event()
        self._http: ThreadingHTTPServer | None = None
        self.published: list[ModelRelease] = []

    def stop(self) -> None:
        self._stop.set()

    def serve_http(self, host: str, port: int) -> None:
        self._http = serve_http(self.metrics.registry, host, port, self.health)

    def run(self) -> None:
        s = self.settings
        reader = Consumer(kafka_config(s, "restore", **{"group.id": s.learner.group_id}))
        producer = Producer(kafka_config(s, "producer"))
        try:
            history = self._history(reader)
            self.learner.restore(history)
            champion = self.learner.champion
            self.metrics.champion(None, None if champion is None else champion.version)
            log.info(
                "model history: %d releases, champion %s; learning from %s + %s",
                len(history), None if champion is None else champion.version,
                s.topics.feature_rows, s.topics.milestones,
            )  # fmt: skip
            self._learn(reader, producer)
        finally:
            self.health.running = False
            reader.close()
            producer.flush(10)
            if self._http is not None:
                self._http.shutdown()
                self._http.server_close()

    def _history(self, reader: Consumer) -> list[ModelRelease]:
        """Every release on the models topic so far."""
        topic = self.settings.topics.models
        reader.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        out: list[ModelRelease] = []
        deadline = time.monotonic() + self.settings.startup_timeout_seconds
        while not self._stop.is_set() and time.monotonic() < deadline:
            self.health.beat()
            msgs = reader.consume(500, timeout=0.5)
            ended = False
            for msg in msgs:
                err = msg.error()
                if err is not None:
                    ended |= err.code() in (
                        KafkaError._PARTITION_EOF,
                        KafkaError.UNKNOWN_TOPIC_OR_PART,
                    )
                    continue
                value = msg.value()
                if value is None:
                    continue
                try:
                    out.append(ModelRelease.model_validate_json(value))
                except ValidationError as e:
                    log.error("models topic offset %d is not a release: %s", msg.offset(), e)
            if ended:
                return out
        raise LearnerFailed(f"could not read the models topic {topic} to its end")

    def _inputs(self, reader: Consumer) -> list[TopicPartition]:
        t = self.settings.topics
        have = existing_partitions(reader)
        wanted = []
        for topic in (t.feature_rows, t.milestones):
            if not have.get(topic):
                raise LearnerFailed(
                    f"no topic {topic}: create the topics first (forewarn topics create)"
                )
            wanted += [TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(have[topic])]
        return wanted

    def _learn(self, reader: Consumer, producer: Producer) -> None:
        s = self.settings
        parts = self._inputs(reader)
        reader.assign(parts)
        last = {(tp.topic, tp.partition): -math.inf for tp in parts}
        #: partition -> when (monotonic) it was read to its end; absent while records come
        ended: dict[tuple[str, int], float] = {}
        #: when (monotonic) the last record of any partition came
        flowing = -math.inf
        lateness = s.learner.lateness_seconds
        rows_topic = s.topics.feature_rows
        while not self._stop.is_set():
            self.health.beat()
            for msg in reader.consume(1000, timeout=0.5):
                tp = (str(msg.topic()), int(msg.partition() or 0))
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        ended.setdefault(tp, time.monotonic())
                    else:
                        log.warning("reading %s: %s", tp, err)
                    continue
                now = time.monotonic()
                if now - flowing > IDLE_SECONDS:
                    # Records flow again after a pause (the start, a worker restarting):
                    # quiet partitions are quiet only relative to this flow.
                    ended = dict.fromkeys(ended, now)
                flowing = now
                ended.pop(tp, None)
                at = self._take(msg.topic() == rows_topic, msg.value())
                if at is not None:
                    last[tp] = max(last[tp], at)
            quiet = time.monotonic() - IDLE_SECONDS
            wm = watermark(last, {tp for tp, since in ended.items() if since <= quiet}) - lateness
            if wm > self.learner.watermark:
                self._publish(producer, self.learner.advance(wm))
                self.metrics.watermark.set(max(wm, 0.0))
            self.metrics.labelled_rows.set(len(self.learner.labelled))
            self.metrics.waiting_rows.set(self.learner.waiting)

    def _take(self, is_row: bool, value: bytes | None) -> float | None:
        """Feed one record to the learner; its event time (None: not usable)."""
        if value is None:
            return None
        try:
            if is_row:
                row = FeatureRow.model_validate_json(value)
                ignored = self.learner.ignored
                self.learner.row(row)
                kind = "ignored" if self.learner.ignored > ignored else "feature_row"
                self.metrics.records.labels(kind).inc()
                return row.occurred_at.timestamp()
            m = Milestone.model_validate_json(value)
        except ValidationError:
            self.metrics.records.labels("unreadable").inc()
            return None
        self.learner.milestone(m)
        self.metrics.records.labels("milestone").inc()
        return m.occurred_at.timestamp()

    def _publish(self, producer: Producer, releases: list[ModelRelease]) -> None:
        if not releases:
            return
        failed: list[str] = []

        def delivered(err: KafkaError | None, _msg: object) -> None:
            if err is not None:
                failed.append(str(err))

        for r in releases:
            value = r.model_dump_json().encode()
            producer.produce(self.settings.topics.models, value, r.key.encode(),
                             on_delivery=delivered)  # fmt: skip
        left = producer.flush(30)
        if failed or left:
            raise LearnerFailed(
                f"could not publish {len(releases)} release(s) to {self.settings.topics.models}: "
                f"{failed[:1] or f'{left} still queued'}"
            )
        for r in releases:
            verdict = "accepted" if r.verdict.accepted else "refused"
            self.metrics.releases.labels(verdict).inc()
            log.info(
                "%s %s (fitted at %s, serves from %s): %s", verdict, r.model_version,
                r.fitted_at.isoformat(), r.serves_from.isoformat(), r.verdict.reason,
            )  # fmt: skip
            if r.verdict.accepted:
                self.metrics.champion(r.champion_version, r.model_version)
            self.published.append(r)
