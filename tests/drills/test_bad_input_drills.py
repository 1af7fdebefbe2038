"""Fault drills on bad input, bad files and bad neighbours: what an SRE and a security reviewer
did to a running worker (issue 9), kept.

Each drill runs ``forewarn score`` as a process, as production does, against the session's
broker. Each waits with a bound and stops everything it started. What each proves is in its
name; the failure modes and what an operator does about each are in docs/operations.md
("Failure modes").
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from confluent_kafka import Producer

from forewarn.models.contracts import (
    DeadLetter,
    DeadLetterReason,
    Decision,
)
from forewarn.models.risk import CARD_FILE, MODEL_FILE, default_model_path
from forewarn.offline.samples import bad_record
from forewarn.pipeline.codecs import encode
from forewarn.streams.broker import free_port, wait_for_port
from forewarn.streams.settings import Settings, TopicNames, kafka_config
from forewarn.streams.simulate import publish_backlog
from tests.conftest import (
    POLICIES_RULEBOOK,
    committed_events,
    event,
    new_settings,
    read_all,
)
from tests.drills.conftest import WorkerProcess, big_producer, good_stream, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.drill]


def test_oversized_records_of_every_kind_are_dead_lettered_within_bounds_and_the_worker_lives(
    bootstrap: str, workers: Callable[..., WorkerProcess]
) -> None:
    s = new_settings(bootstrap, 1)
    profiles, good = good_stream(40, seed=91)
    half = len(good) // 2
    publish_backlog(s, profiles, good[:half])
    now = datetime.now(UTC) - timedelta(minutes=1)
    ok = encode(event("big", "page_view", now, n=1))
    p = big_producer(s)
    events = s.topics.journey_events
    p.produce(
        events, key=b"big", value=ok[:-1] + b', "properties": {"x": "' + b"x" * 800_000 + b'"}}'
    )
    p.produce(events, key=b"big", value=b"y" * 5_000_000)
    p.produce(events, key=b"big", value=b"z" * 60_000, headers=[("trace", b"h" * 900_000)])
    p.produce(events, key=b"k" * 800_000, value=ok)
    p.produce(
        s.topics.customer_profiles,
        key=b"big",
        value=json.dumps({"customer_id": "big", "tier": "t" * 800_000}).encode(),
    )
    assert p.flush(30) == 0
    publish_backlog(s, [], good[half:])
    total = len(good) + 4

    w = workers(s)
    wait_until("every event committed", lambda: committed_events(s) == total, 120, w)
    wait_until(
        "the metrics caught up", lambda: w.metric("forewarn_events_total") >= len(good) + 1, 30, w
    )
    # every good event was scored (and the 800 KB key's event, whose payload is fine)
    assert w.metric("forewarn_events_total") == len(good) + 1
    assert w.metric("forewarn_dead_letters_total", reason="too_large") == 4
    dead = [DeadLetter.model_validate_json(v or b"") for _, v in read_all(s, s.topics.dlq)]
    assert sorted(d.error_type.value for d in dead) == ["too_large"] * 4
    for d in dead:
        assert len(encode(d)) < 1_000_000, "a dead letter always fits"
        assert d.truncated and all(len(c.sha256) == 64 for c in d.truncated)
        assert (d.original_bytes or 0) > 64 * 1024
    assert w.proc.poll() is None, "the worker never exited"
    assert w.stop() == 0


def test_a_profile_with_an_unusable_time_zone_still_gets_its_decision_published(
    bootstrap: str, workers: Callable[..., WorkerProcess], tmp_path: Path
) -> None:
    # Quiet hours read the time zone: that is where "America" used to raise.
    book = tmp_path / "rules.yaml"
    book.write_text(
        POLICIES_RULEBOOK.read_text().replace(
            "policies: {cooldown: 48h}",
            'policies: {cooldown: 48h, quiet_hours: {start: "00:00", end: "00:01", mode: defer}}',
        )
    )
    s = new_settings(bootstrap, 1, rules_path=book)
    p = Producer(kafka_config(s, "producer"))
    for cid, tz in (("tz-bad", "America"), ("tz-long", "x" * 300)):
        profile = {"customer_id": cid, "consent": {"email": True}, "timezone": tz}
        p.produce(s.topics.customer_profiles, key=cid.encode(), value=json.dumps(profile).encode())
        delayed = event(cid, "delivery_delayed", datetime.now(UTC) - timedelta(minutes=1), n=1)
        p.produce(s.topics.journey_events, key=cid.encode(), value=encode(delayed))
    assert p.flush(10) == 0
    w = workers(s)
    wait_until("both events committed", lambda: committed_events(s) == 2, 60, w)
    decisions = [Decision.model_validate_json(v or b"") for _, v in read_all(s, s.topics.decisions)]
    assert sorted((d.customer_id, d.status.value) for d in decisions) == [
        ("tz-bad", "emitted"),
        ("tz-long", "emitted"),
    ]
    dead = [DeadLetter.model_validate_json(v or b"") for _, v in read_all(s, s.topics.dlq)]
    assert sorted(d.error_type.value for d in dead) == ["field_ignored"] * 2
    assert all(d.error_detail.startswith("timezone:") for d in dead)
    assert w.metric("forewarn_dead_letters_total", reason="processing_error") == 0


def test_a_poison_record_in_every_batch_is_typed_and_costs_no_replay(
    bootstrap: str, workers: Callable[..., WorkerProcess]
) -> None:
    s = new_settings(bootstrap, 1)
    profiles, good = good_stream(60, seed=92)
    publish_backlog(s, profiles, [])
    p = big_producer(s)
    kinds = [
        DeadLetterReason.nesting_too_deep,
        DeadLetterReason.number_out_of_range,
        DeadLetterReason.not_utf8,
        DeadLetterReason.malformed_json,
    ]
    batch, poisons = 50, 0
    for i, e in enumerate(good):
        if i % (batch - 1) == 0:  # one in every batch the worker reads
            key, value, headers = bad_record(kinds[poisons % len(kinds)], datetime.now(UTC), i)
            p.produce(s.topics.journey_events, key=key, value=value, headers=list(headers) or None)
            poisons += 1
        p.produce(s.topics.journey_events, key=e.customer_id.encode(), value=encode(e))
    assert p.flush(30) == 0
    w = workers(s, FOREWARN_BATCH_SIZE=str(batch))
    total = len(good) + poisons
    wait_until("every event committed", lambda: committed_events(s) == total, 120, w)
    wait_until(
        "the metrics caught up", lambda: w.metric("forewarn_events_total") == len(good), 30, w
    )
    assert w.metric("forewarn_dead_letters_total") == poisons
    assert w.metric("forewarn_dead_letters_total", reason="processing_error") == 0
    assert w.metric("forewarn_batch_isolations_total") == 0, "bad data never splits a batch"
    # the only changelog reading is the restore at start: nothing is re-read per poison
    assert w.metric("forewarn_state_restore_records_total") == 0
    assert w.metric("forewarn_transactions_total", outcome="aborted") == 0


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def test_a_malicious_model_file_is_refused_and_nothing_in_it_runs(
    bootstrap: str, workers: Callable[..., WorkerProcess], tmp_path: Path
) -> None:
    model = tmp_path / "model"
    shutil.copytree(default_model_path(), model)
    s = new_settings(bootstrap, 1)
    w = workers(s, FOREWARN_MODEL_PATH=str(model), FOREWARN_RELOAD_CHECK_SECONDS="0.5")
    wait_until("ready", lambda: w.get("/readyz")[0] == 200, 60, w)
    marker = tmp_path / "pwned"
    payload = pickle.dumps(_Payload(marker))
    # the strongest swap: the model file replaced, and the card edited to name its hash
    (model / MODEL_FILE).write_bytes(payload)
    card = json.loads((model / CARD_FILE).read_text())
    card["model_sha256"] = hashlib.sha256(payload).hexdigest()
    (model / CARD_FILE).write_text(json.dumps(card))
    wait_until(
        "the swap refused",
        lambda: w.metric("forewarn_model_reloads_total", outcome="refused") >= 1,
        30,
        w,
    )
    assert not marker.exists(), "loading the model executed code from it"
    assert w.metric("forewarn_model_info", version="churn-sim-2026.11") == 1, "last good kept"
    e = event("m1", "page_view", datetime.now(UTC), n=1)
    p = Producer(kafka_config(s, "producer"))
    p.produce(s.topics.journey_events, key=b"m1", value=encode(e))
    p.flush(10)
    wait_until("scoring goes on", lambda: committed_events(s) == 1, 60, w)
    assert "refused the new churn model" in w.output()


def test_a_fenced_worker_exits_3_and_no_broker_at_start_exits_cleanly(
    bootstrap: str, workers: Callable[..., WorkerProcess]
) -> None:
    s = new_settings(bootstrap, 1)
    first = workers(s, FOREWARN_INSTANCE_ID="same")
    wait_until("ready", lambda: first.get("/readyz")[0] == 200, 60, first)
    p = Producer(kafka_config(s, "producer"))
    second = workers(s, FOREWARN_INSTANCE_ID="same")  # fences the first
    deadline = time.monotonic() + 60
    n = 0
    while first.proc.poll() is None and time.monotonic() < deadline:
        e = event(f"c{n}", "page_view", datetime.now(UTC), n=n)  # makes the first commit
        p.produce(s.topics.journey_events, key=e.customer_id.encode(), value=encode(e))
        p.flush(5)
        n += 1
        time.sleep(0.5)
    assert first.proc.poll() == 3, first.output()
    assert "fenced: another worker runs with transactional id" in first.output()
    assert "Traceback" not in first.output()
    assert second.proc.poll() is None

    closed = free_port()  # nothing listens here
    nobody = Settings(bootstrap_servers=f"127.0.0.1:{closed}", topics=TopicNames())
    interrupted = workers(nobody)
    time.sleep(3)
    interrupted.proc.send_signal(signal.SIGINT)
    assert interrupted.proc.wait(15) == 0, "Ctrl-C is heard while waiting for Kafka"
    gave_up = workers(nobody, FOREWARN_STARTUP_TIMEOUT_SECONDS="3")
    assert gave_up.proc.wait(30) == 1
    out = gave_up.output()
    assert f"cannot reach Kafka at 127.0.0.1:{closed} (FOREWARN_BOOTSTRAP_SERVERS)" in out
    assert "Traceback" not in out


def test_idle_connections_cannot_hold_the_health_endpoint(
    bootstrap: str, workers: Callable[..., WorkerProcess]
) -> None:
    s = new_settings(bootstrap, 1)
    w = workers(s)
    wait_until("ready", lambda: w.get("/readyz")[0] == 200, 60, w)
    idle = [socket.create_connection(("127.0.0.1", w.http)) for _ in range(500)]
    try:
        threads = len(os.listdir(f"/proc/{w.proc.pid}/task"))  # each open connection: one
        assert threads < 80, f"{threads} threads with 500 idle clients"
        time.sleep(6)  # past the per-connection timeout: the held ones are let go
        assert w.get("/healthz")[0] == 200
    finally:
        for c in idle:
            c.close()


def test_sigterm_to_the_broker_command_stops_the_broker_it_started() -> None:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "forewarn.cli", "broker", "--port", str(port)],
        stdout=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, 15)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
    finally:
        if proc.poll() is None:
            proc.kill()
