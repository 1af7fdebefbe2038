"""The scoring worker on a real broker: events in, explained actions out; bad input to the
DLQ while good input around it is scored; consent suppressions in forewarn-decisions."""

from __future__ import annotations

import json
import threading
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from forewarn.models.contracts import (
    Consent,
    CustomerProfile,
    DeadLetter,
    Decision,
    OutreachAction,
    SuppressionReason,
)
from forewarn.offline.samples import BAD_KINDS, as_cloudevent_binary, bad_record
from forewarn.offline.simulator import JourneySimulator
from forewarn.pipeline.codecs import RawRecord, encode
from forewarn.streams.metrics import ScoringMetrics
from forewarn.streams.scoring.reading import read_batch
from forewarn.streams.settings import Settings, kafka_config
from tests.conftest import at_least, event, read_topic

pytestmark = pytest.mark.integration

ALL = Consent(email=True, sms=True, push=True, in_app=True, phone=True)


def _producer(settings: Settings) -> Producer:
    return Producer(kafka_config(settings, "producer"))


def _profile(p: Producer, s: Settings, profile: CustomerProfile) -> None:
    p.produce(s.topics.customer_profiles, key=profile.customer_id.encode(), value=encode(profile))


def test_simulated_events_in_explained_actions_out(
    make_settings: Callable[..., Settings], start_worker: Callable[[Settings], Any]
) -> None:
    s = make_settings()
    now = datetime.now(UTC)
    sim = JourneySimulator(
        customers=300, seed=11, start=now - timedelta(days=2), span=timedelta(days=2)
    )
    p = _producer(s)
    for prof in sim.profiles():
        _profile(p, s, prof)
    p.flush(10)
    events = list(sim.events())
    for i, e in enumerate(events):
        if i % 5 == 0:  # a share as CloudEvents, as upstream systems might send them
            key, value, headers = as_cloudevent_binary(e)
            p.produce(s.topics.journey_events, key=key, value=value, headers=list(headers))
        else:
            p.produce(s.topics.journey_events, key=e.customer_id.encode(), value=encode(e))
        if i % 1000 == 0:
            p.poll(0)
    p.flush(30)

    worker = start_worker(s)
    decisions = read_topic(s, s.topics.decisions, until=at_least(20), timeout=60)
    actions = [
        OutreachAction.model_validate_json(v)
        for v in read_topic(s, s.topics.actions, until=at_least(10), timeout=30)
    ]
    worker.stop()

    assert len(decisions) >= 20
    assert len(actions) >= 10
    profiles = {pr.customer_id: pr for pr in sim.profiles()}
    for a in actions:
        assert a.reasons[0].signal == "trigger"
        assert a.reasons[0].detail.startswith(("triggered by", "friction rose"))
        assert len(a.reasons) >= 2, "every action says which signals drove it"
        points = [r.contribution for r in a.reasons[1:] if r.signal != "churn_risk"]
        assert points == sorted(points, reverse=True), "strongest reason first"
        assert 0 < sum(points) <= a.scores.friction + 0.5
        assert a.scores.churn_risk is not None and a.model_version == "churn-sim-2026.11"
        churn_reasons = [r for r in a.reasons if r.signal == "churn_risk"]
        if churn_reasons:  # only where the risk is material
            assert a.scores.churn_risk >= 0.23
        assert profiles[a.customer_id].consent.allows(a.channel)
        assert not profiles[a.customer_id].do_not_contact
    assert len({a.action_id for a in actions}) == len(actions)
    assert worker.worker.records >= len(events)


def test_each_bad_input_lands_in_the_dlq_while_good_events_are_scored(
    make_settings: Callable[..., Settings], start_worker: Callable[[Settings], Any]
) -> None:
    s = make_settings(partitions=1)
    now = datetime.now(UTC) - timedelta(minutes=1)
    p = _producer(s)
    _profile(p, s, CustomerProfile(customer_id="good", consent=ALL))
    p.flush(10)
    sent = []
    for i, kind in enumerate(BAD_KINDS):
        good = event("good", "delivery_delayed", now + timedelta(seconds=i), n=i, order_id=f"o{i}")
        p.produce(s.topics.journey_events, key=b"good", value=encode(good))
        key, value, headers = bad_record(kind, now, i)
        p.produce(s.topics.journey_events, key=key, value=value, headers=list(headers) or None)
        sent.append(kind)
    # missing key: accepted, the payload's customer id is used (and counted)
    nokey = event("good", "page_view", now, n=99)
    p.produce(s.topics.journey_events, key=None, value=encode(nokey))
    p.flush(10)

    worker = start_worker(s)
    dead = [
        DeadLetter.model_validate_json(v)
        for v in read_topic(s, s.topics.dlq, until=at_least(len(BAD_KINDS)))
    ]

    def apologies(values: list[bytes]) -> list[Decision]:
        decisions = (Decision.model_validate_json(v) for v in values)
        return [d for d in decisions if d.rule_id == "delivery_apology"]

    decided = read_topic(
        s, s.topics.decisions, until=lambda vs: len(apologies(vs)) >= len(BAD_KINDS)
    )
    worker.stop()
    decisions = apologies(decided)

    assert sorted(d.error_type for d in dead) == sorted(sent)
    for d in dead:
        assert d.value_base64 is not None, "the original bytes are kept"
        assert d.source_topic == s.topics.journey_events
        assert d.error_detail
    # every good event around the bad ones reached a decision: one emitted, the rest cooled down
    assert len(decisions) == len(BAD_KINDS)
    assert Counter(d.status.value for d in decisions)["emitted"] == 1
    assert {d.suppressed_by for d in decisions} == {None, SuppressionReason.cooldown}
    m = worker.worker.metrics
    assert m.key_problems.labels("missing")._value.get() == 1
    for kind in sent:
        assert m.dead_letters.labels(kind.value)._value.get() == 1


def test_no_consent_suppresses_a_channel_and_the_suppression_is_published(
    make_settings: Callable[..., Settings], start_worker: Callable[[Settings], Any]
) -> None:
    s = make_settings(partitions=1)
    now = datetime.now(UTC) - timedelta(minutes=5)
    p = _producer(s)
    # payment_recovery prefers push, then email, then sms
    _profile(p, s, CustomerProfile(customer_id="no-push", consent=Consent(email=True)))
    _profile(p, s, CustomerProfile(customer_id="nothing", consent=Consent()))
    p.flush(10)
    for cid in ("no-push", "nothing"):
        e = event(cid, "payment_failed", now, n=1, order_id="o1")
        p.produce(s.topics.journey_events, key=cid.encode(), value=encode(e))
    p.flush(10)

    worker = start_worker(s)
    decisions = {
        d.customer_id: d
        for d in (
            Decision.model_validate_json(v)
            for v in read_topic(s, s.topics.decisions, until=at_least(2))
        )
    }
    actions = [
        OutreachAction.model_validate_json(v)
        for v in read_topic(s, s.topics.actions, until=at_least(1))
    ]
    worker.stop()

    assert decisions["no-push"].status.value == "emitted"
    assert decisions["no-push"].action.channel.value == "email"
    assert decisions["nothing"].suppressed_by is SuppressionReason.consent
    assert "no consent" in (decisions["nothing"].detail or "")
    assert [a.customer_id for a in actions] == ["no-push"]
    assert json.loads(encode(decisions["nothing"]))["suppressed_by"] == "consent"


def test_a_quiet_stream_is_not_held_for_a_full_batch(
    make_settings: Callable[..., Settings],
) -> None:
    # Three records and a batch of 500 with an hour to fill it: a read that waited for a full
    # batch would hold them for the hour. It takes them as soon as the first arrives.
    s = make_settings(partitions=1)
    p = _producer(s)
    for n in range(3):
        e = event("quiet", "page_view", datetime.now(UTC), n=n)
        p.produce(s.topics.journey_events, key=b"quiet", value=encode(e))
    p.flush(10)
    consumer = Consumer(kafka_config(s, "consumer"))
    consumer.assign([TopicPartition(s.topics.journey_events, 0, OFFSET_BEGINNING)])
    read: list[RawRecord] = []
    reader = threading.Thread(
        target=lambda: read.extend(read_batch(consumer, 500, 3600.0, ScoringMetrics())),
        daemon=True,
    )
    reader.start()
    reader.join(60)
    assert not reader.is_alive(), "the read waited for a full batch"
    consumer.close()
    assert [r.offset for r in read] == [0, 1, 2]


@pytest.mark.parametrize("catch_up", [50, 400])
def test_a_backlog_is_read_in_larger_batches_up_to_the_catch_up_size(
    make_settings: Callable[..., Settings], start_worker: Callable[[Settings], Any], catch_up: int
) -> None:
    # 3,000 events wait before the worker starts. Batches of 50 would take at least 60
    # transactions; growing to 400 while reads come back full takes far fewer.
    s = make_settings(partitions=1, batch_size=50, catch_up_batch_size=catch_up)
    p = _producer(s)
    t0 = datetime.now(UTC) - timedelta(hours=1)
    n = 3_000
    for i in range(n):
        e = event(f"c{i % 200}", "page_view", t0 + timedelta(milliseconds=i), n=i)
        p.produce(s.topics.journey_events, key=e.customer_id.encode(), value=encode(e))
        if i % 1000 == 0:
            p.poll(0)
    p.flush(30)
    worker = start_worker(s)
    deadline = datetime.now(UTC) + timedelta(seconds=90)
    while worker.worker.records < n and datetime.now(UTC) < deadline:
        threading.Event().wait(0.1)
    worker.stop()
    assert worker.worker.records == n
    batches = worker.worker.batches
    if catch_up == 50:
        assert batches >= n // 50
    else:
        assert batches <= n // 100, f"{batches} batches: the backlog was not read in larger ones"
