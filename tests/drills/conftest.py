"""What the fault drills share: a worker as a process, bounded waits, an attacker's producer,
simulated streams, and a broker of a drill's own."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer
from prometheus_client.parser import text_string_to_metric_families

from forewarn.models.contracts import CustomerProfile, JourneyEvent
from forewarn.offline.simulator import JourneySimulator
from forewarn.streams.broker import EmbeddedBroker, free_port
from forewarn.streams.settings import Settings, TopicNames, kafka_config
from forewarn.streams.topics import create_topics
from tests.conftest import POLICIES_RULEBOOK, settings_env


class WorkerProcess:
    """``forewarn score`` as a process, its output in a file (a full pipe would block it
    while the broker is away and librdkafka logs), its HTTP endpoints on a port of its own."""

    def __init__(self, s: Settings, log: Path, **env: str) -> None:
        self.http = free_port()
        self.log = log
        self._out = open(log, "w")  # noqa: SIM115 (closed in stop)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "forewarn.cli", "score"],
            env=settings_env(s, FOREWARN_HTTP_PORT=str(self.http), **env),
            stdout=self._out,
            stderr=subprocess.STDOUT,
        )

    def get(self, path: str) -> tuple[int | None, str]:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http}{path}", timeout=5) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()
        except OSError as e:
            return None, str(e)

    def metric(self, name: str, **labels: str) -> float:
        """The sum of a metric's samples whose labels include ``labels`` (0 if none)."""
        code, text = self.get("/metrics")
        assert code == 200, text
        total = 0.0
        for fam in text_string_to_metric_families(text):
            for smp in fam.samples:
                if smp.name == name and labels.items() <= smp.labels.items():
                    total += smp.value
        return total

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self, timeout: float = 60) -> int:
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(10)
            self._out.close()
        return self.proc.returncode


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[Callable[..., WorkerProcess]]:
    started: list[WorkerProcess] = []

    def start(s: Settings, **env: str) -> WorkerProcess:
        w = WorkerProcess(s, tmp_path / f"worker-{len(started)}.log", **env)
        started.append(w)
        return w

    yield start
    for w in started:
        w.stop()


def wait_until(what: str, ok: Callable[[], bool], timeout: float, w: WorkerProcess) -> None:
    deadline = time.monotonic() + timeout
    while not ok():
        assert w.proc.poll() is None, f"the worker exited while waiting for {what}:\n{w.output()}"
        assert time.monotonic() < deadline, f"not within {timeout:g} s: {what}\n{w.output()}"
        time.sleep(0.5)


def big_producer(s: Settings) -> Producer:
    """An outside producer that sends what an attacker would (records up to 10 MB)."""
    return Producer(
        kafka_config(s, "producer", **{"message.max.bytes": 10_000_000, "compression.type": "none"})
    )


def good_stream(
    n_customers: int, seed: int, hours: float = 6
) -> tuple[list[CustomerProfile], list[JourneyEvent]]:
    now = datetime.now(UTC)
    sim = JourneySimulator(
        n_customers, seed=seed, start=now - timedelta(hours=hours), span=timedelta(hours=hours)
    )
    return sim.profiles(), list(sim.events())


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[EmbeddedBroker]:
    b = EmbeddedBroker(log=tmp_path / "tansu.log").start()
    yield b
    b.stop()


def fresh_settings(broker: EmbeddedBroker, **kw: Any) -> Settings:
    s = Settings(
        bootstrap_servers=broker.bootstrap,
        topics=TopicNames(partitions=2),
        group_id="drill",
        session_timeout_ms=6000,
        batch_timeout_seconds=0.2,
        instance_id="drill-1",
        rules_path=POLICIES_RULEBOOK,
        **kw,
    )
    assert all(r.ok for r in create_topics(s))
    return s
