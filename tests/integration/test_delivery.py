"""``forewarn deliver`` against a real broker and real HTTP receivers on 127.0.0.1.

Each receiver is a standard-library HTTP server the test starts and always stops; it
verifies every request's Standard Webhooks signature and keeps what it saw. Nothing here
mocks Kafka or the HTTP client.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from forewarn.delivery.config import DeliveryConfig, DestinationBook, parse_destinations
from forewarn.models.contracts import (
    DeadLetter,
    DeadLetterReason,
    HeldDelivery,
    Outcome,
    OutcomeKind,
    OutreachAction,
    Reason,
    Scores,
)
from forewarn.pipeline.codecs import encode
from forewarn.streams.broker import free_port
from forewarn.streams.settings import Settings, kafka_config
from tests.conftest import RunningWorker, read_all, running_in_threads, settings_env

pytestmark = pytest.mark.integration

SECRET = "whsec_" + "c2VjcmV0LWZvci10aGUtZGVsaXZlcnktdGVzdHM="


# -- a receiver --


@dataclass
class Seen:
    webhook_id: str
    at: datetime
    verified: bool
    body: bytes
    path: str


#: (webhook id, attempt at this receiver (1 = first)) -> (status, extra headers, delay seconds)
Script = Callable[[str, int], tuple[int, dict[str, str], float]]


def always_ok(_id: str, _n: int) -> tuple[int, dict[str, str], float]:
    return 200, {}, 0.0


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that hung up (a killed deliverer) is part of the test


@dataclass
class Receiver:
    port: int
    script: Script = always_ok
    seen: list[Seen] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    server: ThreadingHTTPServer | None = None

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                headers = {k: v for k, v in self.headers.items()}
                try:
                    Webhook(SECRET).verify(body, headers)
                    verified = True
                except WebhookVerificationError:
                    verified = False
                wid = headers.get("webhook-id", "")
                with receiver.lock:
                    n = 1 + sum(s.webhook_id == wid for s in receiver.seen)
                    receiver.seen.append(Seen(wid, datetime.now(UTC), verified, body, self.path))
                status, extra, delay = receiver.script(wid, n)
                if delay:
                    time.sleep(delay)
                self.send_response(status)
                for k, v in extra.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok" if status < 400 else b"no")

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = _QuietServer(("127.0.0.1", self.port), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    def ids(self) -> list[str]:
        with self.lock:
            return [s.webhook_id for s in self.seen]

    def wait_for(self, ids: set[str], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not ids <= set(self.ids()) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert ids <= set(self.ids()), f"not received in {timeout} s: {ids - set(self.ids())}"


@pytest.fixture
def receivers() -> Iterator[Callable[..., Receiver]]:
    started: list[Receiver] = []

    def start(script: Script = always_ok, port: int | None = None) -> Receiver:
        r = Receiver(port or free_port(), script).start()
        started.append(r)
        return r

    yield start
    for r in started:
        r.stop()


@pytest.fixture
def start_deliverer() -> Iterator[Callable[..., RunningWorker]]:
    from forewarn.streams.delivery.worker import DeliveryWorker

    books: dict[int, DestinationBook] = {}

    def make(s: Any) -> Any:
        return DeliveryWorker(s, books[id(s)])

    runner = running_in_threads(make)
    start = next(runner)

    def go(s: Settings, book: DestinationBook) -> RunningWorker:
        books[id(s)] = book
        return start(s)

    yield go
    next(runner, None)


# -- actions --


def action(
    n: int,
    *,
    rule: str = "payment_recovery",
    not_before: datetime | None = None,
    expires_in: timedelta = timedelta(hours=1),
    tag: str = "",
) -> OutreachAction:
    now = datetime.now(UTC)
    return OutreachAction(
        action_id=f"act-{tag}{n}",
        customer_id=f"cust-{n % 7}",
        rule_id=rule,
        playbook=rule,
        channel="email",
        priority=50,
        template=f"{rule}_v1",
        reasons=[Reason(signal="payment_failed", contribution=30.0, detail="failed payments: 2")],
        scores=Scores(friction=60.0),
        trigger_event_id=f"evt-{n}",
        triggered_at=now - timedelta(seconds=1),
        decided_at=now,
        not_before=not_before,
        expires_at=now + expires_in,
        rulebook_version="test",
        model_version="test",
    )


def publish(s: Settings, actions: list[OutreachAction], raw: list[bytes] = ()) -> None:  # type: ignore[assignment]
    p = Producer(kafka_config(s, "producer"))
    for a in actions:
        p.produce(s.topics.actions, encode(a), a.customer_id.encode())
    for r in raw:
        p.produce(s.topics.actions, r, b"cust-x")
    assert p.flush(30) == 0


def book_for(*destinations: dict[str, Any]) -> DestinationBook:
    text = json.dumps({"destinations": list(destinations)})
    return parse_destinations(text, environ={"FOREWARN_WEBHOOK_SECRET": SECRET})


def dest(name: str, port: int, **extra: Any) -> dict[str, Any]:
    return {"name": name, "url": f"http://127.0.0.1:{port}/hook",
            "secret_env": "FOREWARN_WEBHOOK_SECRET", **extra}  # fmt: skip


def fast(**over: Any) -> DeliveryConfig:
    base: dict[str, Any] = {
        "group_id": f"forewarn-delivery-{uuid.uuid4().hex[:8]}",
        "backoff_seconds": 0.2,
        "backoff_max_seconds": 1.0,
        "breaker_cooldown_seconds": 1.0,
        "http_port": 0,
    }
    return DeliveryConfig(**{**base, **over})


def outcomes(s: Settings) -> list[Outcome]:
    return [Outcome.model_validate_json(v) for _, v in read_all(s, s.topics.outcomes) if v]


def wait_outcomes(s: Settings, n: int, timeout: float = 60) -> list[Outcome]:
    deadline = time.monotonic() + timeout
    got = outcomes(s)
    while len(got) < n and time.monotonic() < deadline:
        time.sleep(0.5)
        got = outcomes(s)
    assert len(got) >= n, f"{len(got)} outcomes of {n} within {timeout} s: {got}"
    return got


def held_now(s: Settings) -> dict[str, HeldDelivery]:
    """The held-deliveries topic, compacted by hand: what a restart would read back."""
    latest: dict[str, HeldDelivery | None] = {}
    for k, v in read_all(s, s.topics.delivery_held):
        assert k is not None
        latest[k.decode()] = None if v is None else HeldDelivery.model_validate_json(v)
    return {k: h for k, h in latest.items() if h is not None}


# -- the tests --


def test_signed_delivery_matching_and_outcomes(
    make_settings: Callable[..., Settings],
    receivers: Callable[..., Receiver],
    start_deliverer: Callable[..., RunningWorker],
) -> None:
    s = make_settings(delivery=fast())
    crm = receivers()
    book = book_for(dest("crm-webhook", crm.port, match={"rules": ["payment_recovery"]}))
    publish(s, [action(1, tag="a"), action(2, tag="a"), action(3, rule="checkout_assist", tag="a")])
    w = start_deliverer(s, book)
    crm.wait_for({"act-a1", "act-a2"}, 60)
    got = wait_outcomes(s, 2)
    w.stop()
    assert sorted(crm.ids()) == ["act-a1", "act-a2"]  # the checkout_assist action is not theirs
    assert all(x.verified for x in crm.seen)
    body = json.loads(crm.seen[0].body)
    assert OutreachAction.model_validate(body).action_id == crm.seen[0].webhook_id
    assert {(o.action_id, o.kind, o.source) for o in got} == {
        ("act-a1", OutcomeKind.delivered, "crm-webhook"),
        ("act-a2", OutcomeKind.delivered, "crm-webhook"),
    }
    assert held_now(s) == {}


def test_the_example_receiver_verifies_what_a_deliverer_sends(
    make_settings: Callable[..., Settings],
    start_deliverer: Callable[..., RunningWorker],
) -> None:
    """deploy/delivery/receiver.py (standard library only, what compose delivers to) accepts
    every action a real deliverer signs, once each."""
    port = free_port()
    env = {**os.environ, "RECEIVER_SECRET": SECRET, "RECEIVER_HOST": "127.0.0.1",
           "RECEIVER_PORT": str(port)}  # fmt: skip
    script = Path(__file__).resolve().parents[2] / "deploy" / "delivery" / "receiver.py"
    receiver = subprocess.Popen([sys.executable, str(script)], env=env, text=True,
                                stdout=subprocess.PIPE)  # fmt: skip
    try:
        assert receiver.stdout is not None
        assert receiver.stdout.readline().startswith("receiving on"), "listening first"
        s = make_settings(delivery=fast())
        publish(s, [action(n, tag="x") for n in range(3)])
        w = start_deliverer(s, book_for(dest("example", port)))
        got = wait_outcomes(s, 3)
        w.stop()
    finally:
        receiver.terminate()
        out, _ = receiver.communicate(timeout=10)
    assert {(o.action_id, o.kind) for o in got} == {
        (f"act-x{n}", OutcomeKind.delivered) for n in range(3)
    }
    acted = sorted(line.split()[1].rstrip(":") for line in out.splitlines())
    assert acted == ["act-x0", "act-x1", "act-x2"], out


def test_a_tampered_signature_fails_verification(
    receivers: Callable[..., Receiver],
) -> None:
    """The receiver's check can fail: a body changed after signing is refused."""
    from forewarn.delivery.request import build_request

    book = book_for(dest("crm", 1))
    req = build_request(action(1), book.destinations[0], datetime.now(UTC))
    Webhook(SECRET).verify(req.body, req.headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(req.body.replace(b"payment", b"pavment"), req.headers)


def test_deferred_action_arrives_after_not_before(
    make_settings: Callable[..., Settings],
    receivers: Callable[..., Receiver],
    start_deliverer: Callable[..., RunningWorker],
) -> None:
    s = make_settings(delivery=fast())
    crm = receivers()
    not_before = datetime.now(UTC) + timedelta(seconds=6)
    publish(s, [action(1, not_before=not_before, tag="d"), action(2, tag="d")])
    w = start_deliverer(s, book_for(dest("crm", crm.port)))
    crm.wait_for({"act-d2"}, 60)
    # held, in the topic a restart reads back, while it waits
    deadline = time.monotonic() + 30
    while "crm/act-d1" not in held_now(s) and time.monotonic() < deadline:
        time.sleep(0.3)
    if datetime.now(UTC) < not_before:
        assert "crm/act-d1" in held_now(s)
    crm.wait_for({"act-d1"}, 60)
    wait_outcomes(s, 2)
    w.stop()
    [seen] = [x for x in crm.seen if x.webhook_id == "act-d1"]
    assert seen.at >= not_before
    assert held_now(s) == {}  # settled: a tombstone


def test_expired_action_is_never_sent(
    make_settings: Callable[..., Settings],
    receivers: Callable[..., Receiver],
    start_deliverer: Callable[..., RunningWorker],
) -> None:
    s = make_settings(delivery=fast())
    crm = receivers()
    late = action(1, expires_in=timedelta(seconds=-1), tag="e")
    # deferred past its own act-by time: never sent either
    too_late = action(2, not_before=datetime.now(UTC) + timedelta(hours=2), tag="e")
    publish(s, [late, too_late, action(3, tag="e")])
    w = start_deliverer(s, book_for(dest("crm", crm.port)))
    got = wait_outcomes(s, 3)
    w.stop()
    assert crm.ids() == ["act-e3"]
    kinds = {o.action_id: o.kind for o in got}
    assert kinds == {"act-e1": OutcomeKind.expired, "act-e2": OutcomeKind.expired,
                     "act-e3": OutcomeKind.delivered}  # fmt: skip


def test_retries_on_503_honouring_retry_after(
    make_settings: Callable[..., Settings],
    receivers: Callable[..., Receiver],
    start_deliverer: Callable[..., RunningWorker],
) -> None:
    s = make_settings(delivery=fast())

    def script(_id: str, n: int) -> tuple[int, dict[str, str], float]:
        return (503, {"Retry-After": "2"}, 0.0) if n <= 2 else (200, {}, 0.0)

    crm = receivers(script)
    publish(s, [action(1, tag="r")])
    w = start_deliverer(s, book_for(dest("crm", crm.port)))
    [o] = wait_outcomes(s, 1)
    w.stop()
    assert o.kind is OutcomeKind.delivered and o.detail == "HTTP 200, attempt 3"
    times = [x.at for x in crm.seen]
    assert crm.ids() == ["act-r1"] * 3
    # each retry waited at least what Retry-After asked (backoff alone would be <= 1 s)
    assert all(b - a >= timedelta(seconds=2) for a, b in itertools.pairwise(times))


def test_permanent_400_goes_to_the_dead_letter_topic(
    make_settings: Callable[..., Settings],
    receivers: Callable[..., Receiver],
    start_deliverer: Callable[..., RunningWorker],
) -> None:
    s = make_settings(delivery=fast())
    crm = receivers(lambda _id, _n: (400, {}, 0.0))
    publish(s, [action(1, tag="p")], raw=[b"{not json"])
    w = start_deliverer(s, book_for(dest("crm", crm.port)))
    [o] = wait_outcomes(s, 1)
    deadline = time.monotonic() + 30
    dls: list[DeadLetter] = []
    while len(dls) < 2 and time.monotonic() < deadline:
        dls = [
            DeadLetter.model_validate_json(v) for _, v in read_all(s, s.topics.delivery_dlq) if v
        ]
        time.sleep(0.3)
    w.stop()
    assert crm.ids() == ["act-p1"]  # 400 is not retried
    assert o.kind is OutcomeKind.failed
    by_type = {d.error_type: d for d in dls}
    rejected = by_type[DeadLetterReason.delivery_rejected]
    assert rejected.delivery is not None and rejected.delivery.status == 400
    assert rejected.delivery.response_body == "no" and rejected.delivery.attempts == 1
    assert DeadLetterReason.malformed_json in by_type  # not an action at all


def test_receiver_down_for_20s_gets_everything_once(
    make_settings: Callable[..., Settings],
    receivers: Callable[..., Receiver],
    start_deliverer: Callable[..., RunningWorker],
) -> None:
    s = make_settings(delivery=fast(max_attempts=100, breaker_failures=3))
    port = free_port()
    up = receivers()  # another destination, up all along: the breaker pauses only the first
    book = book_for(dest("down", port), dest("up", up.port))
    actions = [action(i, tag="w") for i in range(20)]
    publish(s, actions)
    w = start_deliverer(s, book)
    ids = {a.action_id for a in actions}
    up.wait_for(ids, 60)
    time.sleep(20)
    crm = receivers(port=port)
    crm.wait_for(ids, 60)
    wait_outcomes(s, 40)
    w.stop()
    registry = w.worker.metrics.registry
    refused = registry.get_sample_value(
        "forewarn_delivery_attempts_total", {"destination": "down", "status_class": "connection"}
    )
    # paused: about one trial a second after the first batch, where retrying each of the 20
    # actions on its own backoff (at most 1 s) would have made hundreds of attempts
    assert refused is not None and 20 <= refused < 120, refused
    print(f"\nreceiver down 20 s: {refused:.0f} refused attempts for 20 actions (breaker on)")
    assert registry.get_sample_value("forewarn_delivery_breaker_state", {"destination": "up"}) == 0
    assert sorted(crm.ids()) == sorted(ids)  # once each
    assert sorted(up.ids()) == sorted(ids)
    assert held_now(s) == {}


def test_kill_9_while_holding_deferred_and_in_flight(
    make_settings: Callable[..., Settings],
    receivers: Callable[..., Receiver],
    tmp_path: Path,
) -> None:
    """kill -9 mid-request with deferred actions held; a restart delivers every action; the
    receiver, deduplicating by webhook-id, has each once; repeats are counted."""
    s = make_settings(delivery=fast())
    slow = receivers(lambda _id, _n: (200, {}, 1.0))  # requests in flight for a second
    destinations = tmp_path / "destinations.yaml"
    destinations.write_text(json.dumps({"destinations": [dest("crm", slow.port)]}))
    not_before = datetime.now(UTC) + timedelta(seconds=15)
    deferred = [action(i, not_before=not_before, tag="k") for i in range(10)]
    now_ = [action(i, tag="k") for i in range(10, 40)]
    publish(s, deferred + now_)
    env = settings_env(
        s,
        FOREWARN_DELIVERY_PATH=str(destinations),
        FOREWARN_WEBHOOK_SECRET=SECRET,
        FOREWARN_DELIVERY__GROUP_ID=s.delivery.group_id,
        FOREWARN_DELIVERY__HTTP_PORT="0",
        FOREWARN_DELIVERY__BATCH_SIZE="5",
        FOREWARN_INSTANCE_ID=s.instance_id,
        FOREWARN_TOPICS__DELIVERY_HELD=s.topics.delivery_held,
        FOREWARN_TOPICS__DELIVERY_DLQ=s.topics.delivery_dlq,
    )

    def deliverer() -> subprocess.Popen[str]:
        command = [sys.executable, "-m", "forewarn.cli", "deliver"]
        return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, text=True)

    first = deliverer()
    try:
        deadline = time.monotonic() + 60
        held = held_now(s)
        while (len(held) < len(deferred) or len(slow.ids()) < 3) and time.monotonic() < deadline:
            time.sleep(0.2)
            held = held_now(s)
        assert len(slow.ids()) >= 3, "the first deliverer never got going"
        os.kill(first.pid, signal.SIGKILL)
        first.wait(10)
    finally:
        if first.poll() is None:
            first.kill()
    assert datetime.now(UTC) < not_before, "killed too late: the deferred ones were not held"
    assert {h.action.action_id for h in held.values()} == {a.action_id for a in deferred}
    before_restart = len(slow.ids())
    second = deliverer()
    try:
        slow.wait_for({a.action_id for a in deferred + now_}, 90)
        got = wait_outcomes(s, 40, timeout=60)
    finally:
        second.send_signal(signal.SIGTERM)
        try:
            second.wait(30)
        finally:
            if second.poll() is None:
                second.kill()
    ids = slow.ids()
    assert set(ids) == {a.action_id for a in deferred + now_}
    repeats = len(ids) - len(set(ids))
    print(f"\nkill -9: {before_restart} requests before the kill, {len(ids)} in all, "
          f"{repeats} repeated webhook-ids (dropped by the receiver's deduplication)")  # fmt: skip
    assert all(x.at >= not_before for x in slow.seen if x.webhook_id.startswith("act-k") and
               int(x.webhook_id[5:]) < 10)  # fmt: skip
    # every action has a delivered outcome (a repeat is counted once by the feedback plane)
    assert {o.action_id for o in got if o.kind is OutcomeKind.delivered} == set(ids)
    assert held_now(s) == {}


# -- CloudEvents out --


def read_with_headers(s: Settings, topic: str, n: int, timeout: float = 60) -> list[Any]:
    """(key, value, headers) of ``topic`` from the beginning until ``n`` are read."""
    from confluent_kafka import Consumer

    c = Consumer(kafka_config(s, "consumer", **{"group.id": f"ce-{uuid.uuid4().hex[:8]}"}))
    c.subscribe([topic])
    out: list[Any] = []
    deadline = time.monotonic() + timeout
    try:
        while len(out) < n and time.monotonic() < deadline:
            for m in c.consume(500, 0.2):
                if m.error() is None:
                    out.append((m.key(), m.value(), dict(m.headers() or [])))
    finally:
        c.close()
    return out


def test_cloudevents_actions_and_decisions_read_back_with_the_sdk(
    make_settings: Callable[..., Settings],
    start_worker: Callable[[Settings], Any],
    receivers: Callable[..., Receiver],
    start_deliverer: Callable[..., RunningWorker],
) -> None:
    from cloudevents.core.bindings.kafka import KafkaMessage, from_binary
    from cloudevents.core.formats.json import JSONFormat

    from forewarn.offline.simulator import JourneySimulator

    s = make_settings(actions_format="cloudevents", delivery=fast())
    now = datetime.now(UTC)
    sim = JourneySimulator(customers=300, seed=11, start=now - timedelta(days=2),
                           span=timedelta(days=2))  # fmt: skip
    p = Producer(kafka_config(s, "producer"))
    for prof in sim.profiles():
        p.produce(s.topics.customer_profiles, encode(prof), prof.customer_id.encode())
    for e in sim.events():
        p.produce(s.topics.journey_events, encode(e), e.customer_id.encode())
        p.poll(0)
    assert p.flush(30) == 0
    worker = start_worker(s)
    actions = read_with_headers(s, s.topics.actions, 10)
    decisions = read_with_headers(s, s.topics.decisions, 10)
    assert len(actions) >= 10 and len(decisions) >= 10
    for (key, value, headers), kind in [*((a, "action") for a in actions),
                                        *((d, "decision") for d in decisions)]:  # fmt: skip
        ev = from_binary(KafkaMessage(headers=headers, key=key, value=value), JSONFormat())
        assert ev.get_type() == f"dev.forewarn.{kind}.v1"
        assert ev.get_specversion() == "1.0" and ev.get_source() == "urn:forewarn:scoring"
        data = ev.get_data()
        assert isinstance(data, dict)
        if kind == "action":
            a = OutreachAction.model_validate(data)
            assert ev.get_id() == a.action_id and ev.get_time() == a.decided_at
            assert ev.get_subject() == a.customer_id == key.decode()
        else:
            assert ev.get_id() == data["decision_id"]
    # the deliverer reads them as it reads plain JSON (the value is the same contract)
    crm = receivers()
    d = start_deliverer(s, book_for(dest("crm", crm.port)))
    read = [OutreachAction.model_validate_json(v) for _, v, _ in actions]
    # simulated history: some act-by times have passed, some wait for quiet hours to end
    settled = [a for a in read if a.not_before is None or a.not_before <= datetime.now(UTC)]
    got = {o.action_id: o.kind for o in wait_outcomes(s, len(settled))}
    d.stop()
    worker.stop()
    for a in settled:
        assert got[a.action_id] in (OutcomeKind.delivered, OutcomeKind.expired)
    delivered = {i for i, k in got.items() if k is OutcomeKind.delivered}
    assert delivered and delivered <= set(crm.ids())
    assert all(x.verified for x in crm.seen)


def test_a_missing_held_topic_is_refused_at_start(make_settings: Callable[..., Settings]) -> None:
    from forewarn.streams.delivery.worker import DeliveryWorker, TopicsMissing

    s = make_settings(delivery=fast())
    gone = f"forewarn-delivery-held-missing-{uuid.uuid4().hex[:8]}"
    s = s.model_copy(update={"topics": s.topics.model_copy(update={"delivery_held": gone})})
    with pytest.raises(TopicsMissing, match=f"{gone}; run `forewarn topics create`"):
        DeliveryWorker(s, book_for(dest("crm", 1))).run()
