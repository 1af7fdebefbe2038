"""The churn model is replaced in a running worker, and a broken one is refused."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer

from forewarn.models.contracts import Consent, CustomerProfile, OutreachAction
from forewarn.models.risk import CARD_FILE, default_model_path
from forewarn.pipeline.codecs import encode
from forewarn.streams.settings import Settings, kafka_config
from tests.conftest import event, read_topic

pytestmark = pytest.mark.integration


def _set_card(model: Path, **changes: object) -> None:
    card = json.loads((model / CARD_FILE).read_text())
    card.update(changes)
    tmp = model / "card.tmp"
    tmp.write_text(json.dumps(card))
    tmp.replace(model / CARD_FILE)  # atomic, as a deploy should do it


def delayed(p: Producer, s: Settings, cid: str) -> OutreachAction:
    """Publish a delivery delay for ``cid`` and return the action the worker sends for it."""
    e = event(cid, "delivery_delayed", datetime.now(UTC) - timedelta(minutes=1), n=1)
    p.produce(s.topics.journey_events, key=cid.encode(), value=encode(e))
    p.flush(10)
    values = read_topic(
        s, s.topics.actions, until=lambda vs: any(cid.encode() in v for v in vs), timeout=30
    )
    (a,) = [OutreachAction.model_validate_json(v) for v in values if cid.encode() in v]
    return a


def test_a_new_model_is_picked_up_between_batches_and_a_broken_one_refused(
    make_settings: Callable[..., Settings], start_worker: Callable[[Settings], Any], tmp_path: Path
) -> None:
    model = tmp_path / "model"
    shutil.copytree(default_model_path(), model)
    s = make_settings(partitions=1, model_path=model, reload_check_seconds=0.2)
    p = Producer(kafka_config(s, "producer"))
    for cid in ("a1", "a2", "a3"):
        prof = CustomerProfile(customer_id=cid, consent=Consent(email=True))
        p.produce(s.topics.customer_profiles, key=cid.encode(), value=encode(prof))
    p.flush(10)
    running = start_worker(s)
    metrics = running.worker.metrics

    assert delayed(p, s, "a1").model_version == "churn-sim-2026.11"

    _set_card(model, model_version="churn-hot-2")
    deadline = time.monotonic() + 20
    while running.worker.models.version != "churn-hot-2":
        assert time.monotonic() < deadline, "the new model was never picked up"
        time.sleep(0.1)
    a2 = delayed(p, s, "a2")
    assert a2.model_version == "churn-hot-2" and a2.scores.churn_risk is not None
    assert metrics.model_info.labels("churn-hot-2")._value.get() == 1

    _set_card(model, model_version="churn-bad-3", features=["friction"])
    deadline = time.monotonic() + 20
    while metrics.model_reloads.labels("refused")._value.get() < 1:
        assert time.monotonic() < deadline, "the broken model was never looked at"
        time.sleep(0.1)
    assert delayed(p, s, "a3").model_version == "churn-hot-2", "the last good model stays"
    running.stop()


def test_a_changed_rulebook_takes_effect_without_restart_and_a_broken_one_is_refused(
    make_settings: Callable[..., Settings], start_worker: Callable[[Settings], Any], tmp_path: Path
) -> None:
    from tests.conftest import POLICIES_RULEBOOK

    rules = tmp_path / "rules.yaml"
    original = POLICIES_RULEBOOK.read_text()
    rules.write_text(original)
    s = make_settings(partitions=1, rules_path=rules, reload_check_seconds=0.2)
    p = Producer(kafka_config(s, "producer"))
    for cid in ("r1", "r2", "r3"):
        prof = CustomerProfile(customer_id=cid, consent=Consent(email=True, sms=True))
        p.produce(s.topics.customer_profiles, key=cid.encode(), value=encode(prof))
    p.flush(10)
    running = start_worker(s)
    metrics = running.worker.metrics

    first = delayed(p, s, "r1")
    assert (first.channel.value, first.rulebook_version) == ("email", "2026.11-1")

    edited = original.replace('version: "2026.11-1"', 'version: "2026.11-hot"').replace(
        "channels: [email, sms, push]\n      template: delivery_delay_v1",
        "channels: [sms, email]\n      template: delivery_delay_v2",
    )
    assert edited.count("delivery_delay_v2") == 1
    tmp = tmp_path / "rules.tmp"
    tmp.write_text(edited)
    tmp.replace(rules)
    deadline = time.monotonic() + 20
    while running.worker.engine.rulebook.version != "2026.11-hot":
        assert time.monotonic() < deadline, "the changed rulebook was never picked up"
        time.sleep(0.1)
    second = delayed(p, s, "r2")
    assert (second.channel.value, second.template) == ("sms", "delivery_delay_v2")
    assert metrics.rulebook_info.labels("2026.11-hot")._value.get() == 1

    tmp.write_text(edited.replace("priority: 70", "priority: urgent"))
    tmp.replace(rules)
    deadline = time.monotonic() + 20
    while metrics.rulebook_reloads.labels("refused")._value.get() < 1:
        assert time.monotonic() < deadline, "the broken rulebook was never looked at"
        time.sleep(0.1)
    third = delayed(p, s, "r3")
    assert (third.rulebook_version, third.template) == ("2026.11-hot", "delivery_delay_v2")
    running.stop()
