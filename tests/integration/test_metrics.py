"""The worker's Prometheus endpoint, checked by Prometheus's own promtool."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from confluent_kafka import Producer
from prometheus_client.parser import text_string_to_metric_families

from forewarn.models.contracts import Consent, CustomerProfile, DeadLetterReason
from forewarn.offline.samples import bad_record
from forewarn.pipeline.codecs import encode
from forewarn.streams.broker import free_port
from forewarn.streams.metrics import BATCH_PHASES
from forewarn.streams.settings import Settings, kafka_config
from tests.conftest import event, wait_committed

pytestmark = pytest.mark.integration


def _scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text: str = r.read().decode()
        return text


def test_metrics_endpoint_counts_what_happened_and_passes_promtool(
    make_settings: Callable[..., Settings], start_worker: Callable[[Settings], Any]
) -> None:
    s = make_settings(partitions=1)
    p = Producer(kafka_config(s, "producer"))
    p.produce(
        s.topics.customer_profiles,
        key=b"m1",
        value=encode(CustomerProfile(customer_id="m1", consent=Consent(email=True))),
    )
    now = datetime.now(UTC) - timedelta(minutes=1)
    evs = [
        event("m1", "delivery_delayed", now, n=1),
        event("m1", "page_view", now, n=2),
        event("m1", "loyalty_points_redeemed", now, n=3),
        event("m1", "page_view", now, n=2),
    ]
    for e in evs:
        p.produce(s.topics.journey_events, key=b"m1", value=encode(e))
    key, value, _ = bad_record(DeadLetterReason.malformed_json, now)
    p.produce(s.topics.journey_events, key=key, value=value)
    p.flush(10)

    running = start_worker(s)
    port = free_port()
    running.worker.serve_http("127.0.0.1", port)
    deadline = time.monotonic() + 30
    while running.worker.records < 6 and time.monotonic() < deadline:
        time.sleep(0.1)
    text = _scrape(port)

    samples = {
        (x.name, tuple(sorted(x.labels.items()))): x.value
        for f in text_string_to_metric_families(text)
        for x in f.samples
    }
    assert samples[("forewarn_events_total", (("type", "delivery_delayed"),))] == 1
    assert samples[("forewarn_events_total", (("type", "page_view"),))] == 1
    assert samples[("forewarn_events_total", (("type", "other"),))] == 1
    assert samples[("forewarn_duplicate_events_total", ())] == 1
    assert samples[("forewarn_dead_letters_total", (("reason", "malformed_json"),))] == 1
    assert (
        samples[("forewarn_actions_total", (("channel", "email"), ("rule", "delivery_apology")))]
        == 1
    )
    assert samples[("forewarn_customers_tracked", ())] == 1
    assert samples[("forewarn_worker_up", ())] == 1
    assert samples[("forewarn_batch_processing_seconds_count", ())] >= 1
    assert samples[("forewarn_transactions_total", (("outcome", "committed"),))] >= 1
    assert samples[("forewarn_rebalances_total", (("kind", "assigned"),))] >= 1
    assert samples[("forewarn_assigned_partitions", ())] == 1
    assert samples[("forewarn_state_restore_seconds_count", ())] == 1
    assert samples[("forewarn_state_restoring_partitions", ())] == 0
    assert samples[("forewarn_state_record_bytes_count", ())] >= 1
    # where a batch's time goes, phase by phase, and how soon it was ready after assignment
    for phase in BATCH_PHASES:
        assert samples[("forewarn_batch_phase_seconds_total", (("phase", phase),))] > 0, phase
    assert samples[("forewarn_ready_after_assignment_seconds", ())] > 0
    assert "m1" not in text, "no customer id ever becomes a label"

    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (.ci/run installs Debian's prometheus package)")
    check = subprocess.run(
        [promtool, "check", "metrics"],
        input=text,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert check.returncode == 0, check.stdout + check.stderr


def _get(port: int, path: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_readiness_follows_assignment_and_liveness_fails_when_the_loop_stalls(
    make_settings: Callable[..., Settings], start_worker: Callable[[Settings], Any]
) -> None:
    # The fault-injection knob stalls the loop after the first batch, as a hung broker
    # call or a deadlock would.
    s = make_settings(partitions=2, fault_hang_after_batches=1, liveness_timeout_seconds=1.5)
    port = free_port()
    running = start_worker(s)
    running.worker.serve_http("127.0.0.1", port)
    deadline = time.monotonic() + 30
    while _get(port, "/readyz")[0] != 200:
        assert time.monotonic() < deadline, _get(port, "/readyz")
        time.sleep(0.1)
    assert _get(port, "/readyz")[1]["assigned"] == [0, 1]
    assert _get(port, "/healthz")[0] == 200

    p = Producer(kafka_config(s, "producer"))
    now = datetime.now(UTC) - timedelta(minutes=1)
    for i in range(2):  # batch 1 commits, batch 2 hangs with its transaction open
        e = event("h1", "page_view", now, n=i)
        p.produce(s.topics.journey_events, key=b"h1", value=encode(e))
        p.flush(10)
        if i == 0:
            wait_committed(s, 1, timeout=30)
    deadline = time.monotonic() + 30
    while _get(port, "/healthz")[0] != 503:
        assert time.monotonic() < deadline, "liveness never noticed the stalled loop"
        time.sleep(0.2)
    assert _get(port, "/healthz")[1]["seconds_since_loop_turned"] >= 1.5
    running.stop()


def test_consumer_lag_is_reported_per_partition_and_falls_to_zero(
    make_settings: Callable[..., Settings], start_worker: Callable[[Settings], Any]
) -> None:
    """A backlog waits when the worker starts: its lag shows it, then reaches 0."""
    s = make_settings(partitions=2, batch_size=20, reload_check_seconds=0.1)
    p = Producer(kafka_config(s, "producer"))
    now = datetime.now(UTC) - timedelta(minutes=5)
    n = 3000
    for i in range(n):
        e = event(f"c{i % 50}", "page_view", now, n=i)
        p.produce(s.topics.journey_events, key=e.customer_id.encode(), value=encode(e))
    assert p.flush(30) == 0
    running = start_worker(s)
    port = free_port()
    running.worker.serve_http("127.0.0.1", port)

    def lag() -> dict[str, float]:
        return {
            x.labels["partition"]: x.value
            for f in text_string_to_metric_families(_scrape(port))
            for x in f.samples
            if x.name == "forewarn_consumer_lag_records"
        }

    seen: list[float] = []
    deadline = time.monotonic() + 60
    while running.worker.records < n and time.monotonic() < deadline:
        seen.append(sum(lag().values()))
        time.sleep(0.05)
    wait_committed(s, n)
    assert max(seen) > 0, "a backlog was waiting"
    deadline = time.monotonic() + 10
    while sum(lag().values()) > 0 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert lag() == {"0": 0.0, "1": 0.0}
