"""Exactly-once scoring on the real broker: crash, rebalance, restore, poison batch.

Every run here is compared with one uninterrupted reference run over the same simulated
stream: the same action ids exactly once, the same decisions, the same final state of every
customer (read back from the changelog, which is what any restore starts from).
"""

from __future__ import annotations

import base64
import json
import signal
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer

from forewarn.models.contracts import Consent, CustomerProfile, JourneyEvent
from forewarn.models.state_codec import decode_state, encode_state
from forewarn.offline.simulator import JourneySimulator
from forewarn.pipeline.codecs import encode
from forewarn.rules.partition_volumes import VOLUME_KEY
from forewarn.streams.settings import Settings, kafka_config
from forewarn.streams.simulate import publish_backlog
from tests.conftest import (
    ROOT,
    RunningWorker,
    committed_events,
    event,
    new_settings,
    read_all,
    read_partitioned,
    score_process,
    settings_env,
    sigterm_once_committed,
    wait_committed,
)

pytestmark = pytest.mark.integration

PARTITIONS = 2
BATCH = 100  # small batches: many transactions, many places for things to go wrong
#: the policies rulebook plus a rule with a volume target: its per-partition thresholds go
#: through every crash, rebalance and restore here
RULES = ROOT / "tests" / "data" / "volume_rulebook.yaml"


@dataclass(frozen=True)
class Stream:
    profiles: list[CustomerProfile]
    events: list[JourneyEvent]


@dataclass(frozen=True)
class Outcome:
    actions: Counter[str]
    decisions: Counter[str]
    states: dict[str, bytes]
    #: partition -> its volume thresholds' last changelog record
    volumes: dict[int, bytes]
    #: rule id -> actions
    by_rule: Counter[str]


@pytest.fixture(scope="module")
def stream() -> Stream:
    now = datetime.now(UTC)
    sim = JourneySimulator(120, seed=4242, start=now - timedelta(days=3), span=timedelta(days=3))
    return Stream(sim.profiles(), list(sim.events()))


def outcome(s: Settings) -> Outcome:
    sent = [json.loads(v or b"{}") for _, v in read_all(s, s.topics.actions)]
    actions = Counter(a["action_id"] for a in sent)
    decisions = Counter(
        json.loads(v or b"{}")["decision_id"] for _, v in read_all(s, s.topics.decisions)
    )
    states: dict[str, bytes] = {}
    volumes: dict[int, bytes] = {}
    for p, k, v in read_partitioned(s, s.topics.state):  # the last record per key wins
        assert k is not None
        if k.decode() == VOLUME_KEY:
            assert v is not None
            volumes[p] = v
        elif v is None:
            states.pop(k.decode(), None)
        else:
            states[k.decode()] = v
    return Outcome(actions, decisions, states, volumes, Counter(a["rule_id"] for a in sent))


def start(s: Settings, **update: Any) -> RunningWorker:
    w = RunningWorker(s.model_copy(update=update))
    w.thread.start()
    return w


def uninterrupted(bootstrap: str, stream: Stream, batch_size: int) -> Outcome:
    """The stream scored by one worker from start to end, in batches of ``batch_size``."""
    s = new_settings(bootstrap, PARTITIONS, batch_size=batch_size, rules_path=RULES)
    publish_backlog(s, stream.profiles, stream.events)
    w = start(s)
    try:
        wait_committed(s, len(stream.events))
    finally:
        w.stop()
    return outcome(s)


@pytest.fixture(scope="module")
def reference(bootstrap: str, stream: Stream) -> Outcome:
    out = uninterrupted(bootstrap, stream, BATCH)
    assert out.actions and out.decisions and len(out.states) == len(stream.profiles)
    assert max(out.actions.values()) == 1
    assert sorted(out.volumes) == list(range(PARTITIONS))
    assert out.by_rule["riskiest_moments"] > 0, "the volume rule acted after its warm-up"
    return out


def assert_same(got: Outcome, ref: Outcome) -> None:
    assert got.actions == ref.actions, "every expected action exactly once, and no other"
    assert got.decisions == ref.decisions
    assert got.volumes == ref.volumes, "the volume thresholds came through as they were"
    assert got.states.keys() == ref.states.keys()
    differing = [c for c in ref.states if got.states[c] != ref.states[c]]
    if differing:
        a, b = decode_state(got.states[differing[0]]), decode_state(ref.states[differing[0]])
        fields = {f: (getattr(a, f), getattr(b, f)) for f in a.__slots__
                  if getattr(a, f) != getattr(b, f)}  # fmt: skip
        raise AssertionError(f"{len(differing)} customers' final state differs; {fields}")


def _lines_until(proc: subprocess.Popen[str], marker: str, timeout: float) -> list[str]:
    """The process's output lines up to the one containing ``marker``."""
    lines: list[str] = []
    found = threading.Event()

    def read() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if marker in line:
                found.set()
                return

    threading.Thread(target=read, daemon=True).start()
    assert found.wait(timeout), f"no {marker!r} in:\n{''.join(lines)}"
    return lines


def test_a_worker_killed_mid_transaction_is_replaced_without_loss_or_duplicates(
    bootstrap: str, stream: Stream, reference: Outcome
) -> None:
    s = new_settings(bootstrap, PARTITIONS, batch_size=BATCH, rules_path=RULES)
    n = publish_backlog(s, stream.profiles, stream.events)
    env = settings_env(s, FOREWARN_BATCH_SIZE=str(BATCH), FOREWARN_INSTANCE_ID="crash-test")

    first = score_process({**env, "FOREWARN_FAULT_HANG_AFTER_BATCHES": "6"})
    try:
        lines = _lines_until(first, "fault injection: holding", timeout=60)
        held = lines[-1]
        first.send_signal(signal.SIGKILL)  # kill -9 with the 7th transaction open
        first.wait(10)
    finally:
        if first.poll() is None:
            first.kill()
    assert "0 changelog records" not in held, "the open transaction had produced records"
    assert 0 < committed_events(s) < n, "killed mid-stream"

    second = score_process(env)  # the same id: fences the dead one, aborts its transaction
    out = sigterm_once_committed(second, s, n)
    assert second.returncode == 0, out
    assert "restored partition" in out
    assert_same(outcome(s), reference)


def test_adding_then_removing_a_worker_rebalances_without_loss_or_duplicates(
    bootstrap: str, stream: Stream, reference: Outcome
) -> None:
    s = new_settings(bootstrap, PARTITIONS, batch_size=BATCH, rules_path=RULES)
    events = stream.events
    thirds = [events[: len(events) // 3], events[len(events) // 3 : 2 * len(events) // 3],
              events[2 * len(events) // 3 :]]  # fmt: skip
    publish_backlog(s, stream.profiles, thirds[0])
    one = start(s, instance_id="one")
    two: RunningWorker | None = None
    try:
        wait_committed(s, len(thirds[0]))
        two = start(s, instance_id="two")  # joins: the group rebalances
        deadline = time.monotonic() + 30
        while not (one.worker.health.assigned and two.worker.health.assigned):
            assert time.monotonic() < deadline, "the partitions were never shared"
            time.sleep(0.2)
        publish_backlog(s, [], thirds[1])
        wait_committed(s, len(thirds[0]) + len(thirds[1]))
        one.stop()  # leaves: everything moves to the second worker
        publish_backlog(s, [], thirds[2])
        wait_committed(s, len(events))
        assert two.worker.health.assigned == set(range(PARTITIONS))
    finally:
        for w in (one, two):
            if w is not None and w.thread.is_alive():
                w.stop()
    assert one.worker.records > 0 and two.worker.records > 0
    moved = [r for r in two.worker.restores if r.records > 0]
    assert moved, "the second worker restored the partition it took over from the changelog"
    assert_same(outcome(s), reference)


def _snapshot(w: RunningWorker) -> dict[str, bytes]:
    return {
        state.customer_id: encode_state(state)
        for store in list(w.worker.stores.stores.values())
        for state in store
    }


def _wait_ready(w: RunningWorker, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not w.worker.health.ready()[0]:
        assert time.monotonic() < deadline, f"not ready: {w.worker.health.ready()[1]}"
        time.sleep(0.1)


@pytest.fixture
def scored(bootstrap: str, stream: Stream) -> Iterator[tuple[Callable[..., Any], ...]]:
    """Run a stream through one worker to its end; yields a way to start more workers."""
    workers: list[RunningWorker] = []

    def run(**overrides: Any) -> tuple[Settings, dict[str, bytes]]:
        s = new_settings(bootstrap, PARTITIONS, batch_size=BATCH, **overrides)
        publish_backlog(s, stream.profiles, stream.events)
        w = start(s, instance_id="before")
        workers.append(w)
        wait_committed(s, len(stream.events))
        before = _snapshot(w)
        w.stop()
        return s, before

    def again(s: Settings, **update: Any) -> RunningWorker:
        w = start(s, **update)
        workers.append(w)
        _wait_ready(w)
        return w

    yield run, again
    for w in workers:
        if w.thread.is_alive():
            w.stop()


def test_a_fresh_worker_restores_every_customer_from_the_changelog(scored: Any) -> None:
    run, again = scored
    s, before = run()
    fresh = again(s, instance_id="fresh")
    assert _snapshot(fresh) == before
    assert len(before) == 120
    assert sum(r.records for r in fresh.worker.restores) >= len(before)
    assert all(r.from_checkpoint is None for r in fresh.worker.restores)


def test_rocksdb_state_restarts_from_its_checkpoint_and_rebuilds_without_it(
    scored: Any, tmp_path: Path
) -> None:
    run, again = scored
    s, before = run(state_dir=tmp_path / "a")
    assert len(before) == 120
    same_disk = again(s, instance_id="same-disk")
    assert _snapshot(same_disk) == before
    restores = same_disk.worker.restores
    assert restores and all(r.from_checkpoint is not None for r in restores)
    assert sum(r.records for r in restores) == 0, "nothing to read past the checkpoint"
    assert 100 <= same_disk.worker.stores.customers() <= 140, "the gauge sees RocksDB too"
    same_disk.stop()

    new_disk = again(s.model_copy(update={"state_dir": tmp_path / "b"}), instance_id="new-disk")
    assert _snapshot(new_disk) == before
    assert all(r.from_checkpoint is None for r in new_disk.worker.restores)


def test_a_poison_record_is_dead_lettered_and_the_partition_moves_on(bootstrap: str) -> None:
    s = new_settings(bootstrap, 1, batch_size=BATCH)
    p = Producer(kafka_config(s, "producer"))
    for cid in ("ann", "bob", "cat"):
        prof = CustomerProfile(customer_id=cid, consent=Consent(email=True, sms=True, push=True))
        p.produce(s.topics.customer_profiles, key=cid.encode(), value=encode(prof))
    # Bob's state in the changelog is corrupt (a bad deploy, a hand-made record): scoring
    # his event raises. It is not bad input, so it is not a validation failure.
    p.produce(s.topics.state, key=b"bob", value=b"\x93\x09garbage")
    now = datetime.now(UTC) - timedelta(minutes=5)
    evs = [event(c, "delivery_delayed", now, n=1) for c in ("ann", "bob", "cat")]
    evs += [event("ann", "page_view", now + timedelta(seconds=1), n=2)]
    for e in evs:
        p.produce(s.topics.journey_events, key=e.customer_id.encode(), value=encode(e))
    p.flush(10)

    w = start(s)
    try:
        wait_committed(s, len(evs), timeout=60)
    finally:
        w.stop()
    dls = [json.loads(v or b"{}") for _, v in read_all(s, s.topics.dlq)]
    # Bob's profile and his event: both needed his state.
    assert sorted(d["source_topic"] for d in dls) == [
        s.topics.customer_profiles,
        s.topics.journey_events,
    ]
    for dl in dls:
        assert dl["error_type"] == "processing_error"
        assert base64.b64decode(dl["key_base64"]) == b"bob"
        assert "StateDecodeError" in dl["error_detail"]
    acted = sorted(json.loads(v or b"{}")["customer_id"] for _, v in read_all(s, s.topics.actions))
    assert acted == ["ann", "cat"], "the rest of the batch was scored"


def test_a_second_worker_with_the_same_instance_id_fences_the_first(bootstrap: str) -> None:
    from forewarn.streams.scoring.worker import WorkerFenced

    s = new_settings(bootstrap, PARTITIONS)
    first = start(s, instance_id="twin")
    second: RunningWorker | None = None
    try:
        _wait_ready(first)
        second = start(s, instance_id="twin")  # the same transactional id: a zombie-fencing
        deadline = time.monotonic() + 60
        p = Producer(kafka_config(s, "producer"))
        n = 0
        while first.thread.is_alive():
            assert time.monotonic() < deadline, "the first worker was never fenced"
            e = event(f"t{n % 7}", "page_view", datetime.now(UTC), n=n)
            p.produce(s.topics.journey_events, key=e.customer_id.encode(), value=encode(e))
            p.flush(5)
            n += 1
            time.sleep(0.2)
        assert isinstance(first.error, WorkerFenced), first.error
        assert "FOREWARN_INSTANCE_ID" in str(first.error)
        assert second.thread.is_alive(), "the newer worker carries on"
    finally:
        for w in (first, second):
            if w is not None and w.thread.is_alive():
                w.stop()


def test_decisions_do_not_depend_on_the_batch_size_on_the_broker(
    bootstrap: str, stream: Stream, reference: Outcome
) -> None:
    # The profile gate used to trust the embedded broker's high watermark of the profiles
    # topic (the last record batch's base offset + 1: "1" for 1,000 profiles), released
    # events before their consent was read, and 1 decision in 276 differed between batches
    # of 500 and of 50. It now waits for the end of the partition as the fetch reports it.
    got = uninterrupted(bootstrap, stream, batch_size=13)
    assert got.decisions == reference.decisions
    assert got.actions == reference.actions
