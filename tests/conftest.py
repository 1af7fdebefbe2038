"""Shared fixtures: a real broker per session, unique topics per test, worker and reader helpers.

Integration tests run against the embedded broker the session starts itself, or against any
Kafka named by ``FOREWARN_TEST_BOOTSTRAP``. Nothing here mocks Kafka.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from forewarn.models.contracts import JourneyEvent
from forewarn.models.event_fields import EventFields

ROOT = Path(__file__).resolve().parent.parent
#: the rulebook policy and plumbing tests run on (frozen; the shipped one gets tuned)
POLICIES_RULEBOOK = ROOT / "tests" / "data" / "policies_rulebook.yaml"


@pytest.fixture(scope="session")
def bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    given = os.environ.get("FOREWARN_TEST_BOOTSTRAP")
    if given:
        yield given
        return
    from forewarn.streams.broker import EmbeddedBroker

    log = tmp_path_factory.mktemp("broker") / "tansu.log"
    with EmbeddedBroker(log=log) as broker:
        yield broker.bootstrap


def new_settings(bootstrap: str, partitions: int = 2, **overrides: Any) -> Any:
    """Settings with topics and a group of their own, topics created."""
    from forewarn.streams.broker import free_port
    from forewarn.streams.settings import FeedbackConfig, Settings, TopicNames
    from forewarn.streams.topics import create_topics

    if "batch_size" in overrides:  # a test that cuts batches means them: no catch-up growth
        overrides.setdefault("catch_up_batch_size", overrides["batch_size"])
    tag = uuid.uuid4().hex[:8]
    feedback = FeedbackConfig(group_id=f"forewarn-test-{tag}-feedback", session_timeout_seconds=6)
    settings = Settings(
        bootstrap_servers=bootstrap,
        group_id=f"forewarn-test-{tag}",
        topics=TopicNames(partitions=partitions).suffixed(tag),
        feedback_http_port=free_port(),
        session_timeout_ms=6000,
        http_port=0,
        batch_timeout_seconds=0.2,
        instance_id=f"test-{tag}",
        **{"rules_path": POLICIES_RULEBOOK, "feedback": feedback, **overrides},
    )
    assert all(r.ok for r in create_topics(settings))
    return settings


@pytest.fixture
def make_settings(bootstrap: str) -> Callable[..., Any]:
    """``new_settings`` as a factory fixture."""
    return lambda partitions=2, **overrides: new_settings(bootstrap, partitions, **overrides)


def settings_env(s: Any, **extra: str) -> dict[str, str]:
    """The environment that gives a ``forewarn`` subprocess the settings ``s``."""
    t = s.topics
    env = {
        **os.environ,
        "FOREWARN_BOOTSTRAP_SERVERS": s.bootstrap_servers,
        "FOREWARN_GROUP_ID": s.group_id,
        "FOREWARN_SESSION_TIMEOUT_MS": str(s.session_timeout_ms),
        "FOREWARN_BATCH_TIMEOUT_SECONDS": str(s.batch_timeout_seconds),
        "FOREWARN_HTTP_PORT": "0",
        "FOREWARN_TOPICS__PARTITIONS": str(t.partitions),
        "FOREWARN_TOPICS__JOURNEY_EVENTS": t.journey_events,
        "FOREWARN_TOPICS__CUSTOMER_PROFILES": t.customer_profiles,
        "FOREWARN_TOPICS__ACTIONS": t.actions,
        "FOREWARN_TOPICS__DECISIONS": t.decisions,
        "FOREWARN_TOPICS__DLQ": t.dlq,
        "FOREWARN_TOPICS__STATE": t.state,
        "FOREWARN_TOPICS__OUTCOMES": t.outcomes,
        "FOREWARN_TOPICS__MILESTONES": t.milestones,
        "FOREWARN_TOPICS__FEATURE_ROWS": t.feature_rows,
        "FOREWARN_TOPICS__MODELS": t.models,
        "FOREWARN_TOPICS__OUTCOMES_DLQ": t.outcomes_dlq,
        "FOREWARN_TOPICS__FEEDBACK": t.feedback,
        "FOREWARN_FEEDBACK__GROUP_ID": s.feedback.group_id,
        "FOREWARN_FEEDBACK__SESSION_TIMEOUT_SECONDS": str(s.feedback.session_timeout_seconds),
        "FOREWARN_FEEDBACK__ORPHAN_GRACE_MINUTES": str(s.feedback.orphan_grace_minutes),
        "FOREWARN_FEEDBACK_HTTP_PORT": str(s.feedback_http_port),
    }
    if s.rules_path is not None:
        env["FOREWARN_RULES_PATH"] = str(s.rules_path)
    env.update(extra)
    return env


def committed_events(s: Any) -> int:
    """How many journey events the scoring group has committed, over all partitions."""
    from confluent_kafka import Consumer, TopicPartition

    from forewarn.streams.settings import kafka_config

    c = Consumer(kafka_config(s, "consumer"))
    try:
        parts = [TopicPartition(s.topics.journey_events, p) for p in range(s.topics.partitions)]
        return sum(max(0, tp.offset) for tp in c.committed(parts, timeout=10))
    finally:
        c.close()


def wait_committed(s: Any, n: int, timeout: float = 90) -> None:
    """Wait until the scoring group has committed ``n`` journey events."""
    deadline = time.monotonic() + timeout
    while committed_events(s) < n and time.monotonic() < deadline:
        time.sleep(0.3)
    assert committed_events(s) == n, "the stream was not consumed to its end in time"


def score_process(env: dict[str, str]) -> subprocess.Popen[str]:
    """``forewarn score`` in a subprocess, output (stdout and stderr) on ``stdout``."""
    return subprocess.Popen(
        [sys.executable, "-m", "forewarn.cli", "score"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def sigterm(proc: subprocess.Popen[str], timeout: float = 30) -> str:
    """Stop a process the way Kubernetes does; its output. Killed if it does not stop."""
    try:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=timeout)
        return out
    finally:
        if proc.poll() is None:
            proc.kill()


def sigterm_once_committed(proc: subprocess.Popen[str], s: Any, n: int, timeout: float = 90) -> str:
    """Wait until the worker process committed ``n`` events, then SIGTERM it; its output."""
    try:
        wait_committed(s, n, timeout=timeout)
    except AssertionError:
        proc.kill()
        raise
    return sigterm(proc)


def read_all(s: Any, topic: str) -> list[tuple[bytes | None, bytes | None]]:
    """Every (key, value) of ``topic`` to its end, read_committed, in partition order."""
    return [(k, v) for _, k, v in read_partitioned(s, topic)]


def read_partitioned(s: Any, topic: str) -> list[tuple[int, bytes | None, bytes | None]]:
    """Every (partition, key, value) of ``topic`` to its end, read_committed."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

    from forewarn.streams.settings import kafka_config

    c = Consumer(kafka_config(s, "restore", **{"group.id": f"read-{uuid.uuid4().hex[:8]}"}))
    parts = s.topics.partitions
    c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(parts)])
    out: list[tuple[int, bytes | None, bytes | None]] = []
    ended: set[int] = set()
    deadline = time.monotonic() + 60
    try:
        while len(ended) < parts and time.monotonic() < deadline:
            for m in c.consume(1000, 0.5):
                err = m.error()
                if err is not None and err.code() == KafkaError._PARTITION_EOF:
                    ended.add(m.partition() or 0)
                elif err is None:
                    k, v = m.key(), m.value()
                    out.append((m.partition() or 0, k.encode() if isinstance(k, str) else k,
                                v.encode() if isinstance(v, str) else v))  # fmt: skip
    finally:
        c.close()
    assert len(ended) == parts, f"could not read {topic} to its end"
    return out


class RunningWorker:
    """A scoring worker (or another long-lived process: ``make``) running in a thread."""

    def __init__(self, settings: Any, make: Callable[[Any], Any] | None = None) -> None:
        from forewarn.streams.scoring.worker import ScoringWorker

        self.worker: Any = (make or ScoringWorker)(settings)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.worker.run()
        except BaseException as e:  # surfaced by stop()
            self.error = e

    def stop(self) -> None:
        self.worker.stop()
        self.thread.join(timeout=30)
        assert not self.thread.is_alive(), f"{type(self.worker).__name__} did not stop in 30 s"
        if self.error is not None:
            raise self.error


def running_in_threads(
    make: Callable[[Any], Any] | None = None,
) -> Iterator[Callable[[Any], RunningWorker]]:
    """A fixture's body: start processes (``make``; default a scoring worker) in threads,
    and stop every one still running at the end of the test."""
    running: list[RunningWorker] = []

    def start(settings: Any) -> RunningWorker:
        w = RunningWorker(settings, make)
        w.thread.start()
        running.append(w)
        return w

    yield start
    for w in running:
        if w.thread.is_alive():
            w.stop()


@pytest.fixture
def start_worker() -> Iterator[Callable[[Any], RunningWorker]]:
    """Run a scoring worker in a thread; always stopped at the end of the test."""
    yield from running_in_threads()


def read_topic(
    bootstrap_settings: Any,
    topic: str,
    *,
    until: Callable[[list[bytes]], bool],
    timeout: float = 30.0,
) -> list[bytes]:
    """Values read (read_committed, from the beginning) until ``until(values)`` or timeout."""
    from confluent_kafka import Consumer

    from forewarn.streams.settings import kafka_config

    c = Consumer(
        kafka_config(
            bootstrap_settings,
            "consumer",
            **{"group.id": f"reader-{uuid.uuid4().hex[:8]}", "enable.partition.eof": False},
        )
    )
    c.subscribe([topic])
    values: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline and not until(values):
            for m in c.consume(500, 0.2):
                if m.error() is None:
                    values.append(m.value() or b"")
    finally:
        c.close()
    return values


def at_least(n: int) -> Callable[[list[bytes]], bool]:
    return lambda values: len(values) >= n


def event(
    customer: str, kind: str, at: datetime, n: int | None = None, **props: Any
) -> JourneyEvent:
    """A hand-made journey event for scenario tests."""
    return JourneyEvent(
        event_id=f"{customer}-{kind}-{n if n is not None else at.timestamp()}",
        customer_id=customer,
        type=kind,
        occurred_at=at,
        session_id=props.pop("session_id", "s1"),
        properties=props,
    )


T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def fields_of(e: EventFields) -> dict[str, Any]:
    """An event's fields by name, whether read as the contract or straight from bytes."""
    return {name: getattr(e, name) for name in JourneyEvent.model_fields}
