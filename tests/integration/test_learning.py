"""The contact-risk model learned from the stream: scoring workers publish feature rows and
milestones, ``forewarn learn`` fits and publishes releases, workers serve them without a
restart, and a restarted worker serves the same model."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from confluent_kafka import Producer

from forewarn.models.contracts import Decision, JourneyEvent
from forewarn.offline.replay import replay
from forewarn.offline.simulator import JourneySimulator
from forewarn.pipeline.codecs import encode
from forewarn.pipeline.learner import ContactLearner, LearnerSettings
from forewarn.rules.rulebook import load_rulebook
from forewarn.streams.learning import LearnerWorker
from forewarn.streams.settings import LearnerConfig, Settings, kafka_config
from tests.conftest import ROOT, RunningWorker, read_topic, running_in_threads, wait_committed

pytestmark = pytest.mark.integration

RULES = ROOT / "tests" / "data" / "contact_rulebook.yaml"
DAY = timedelta(days=1)


@pytest.fixture
def start_learner() -> Iterator[Callable[[Settings], RunningWorker]]:
    """``forewarn learn`` in a thread; always stopped at the end of the test."""
    yield from running_in_threads(LearnerWorker)


def publish(s: Settings, events: list[JourneyEvent]) -> None:
    p = Producer(kafka_config(s, "producer"))
    for e in events:
        p.produce(s.topics.journey_events, key=e.customer_id.encode(), value=encode(e))
    assert p.flush(30) == 0


def decisions_for(s: Settings, ids: set[str], timeout: float = 60) -> list[Decision]:
    """The decisions whose trigger event is one of ``ids``, once the worker made them all
    (at least one per event that can trigger the rule)."""
    want = {i.encode() for i in ids}

    def done(values: list[bytes]) -> bool:
        seen = {
            v.split(b'"trigger_event_id":"')[1].split(b'"')[0]
            for v in values
            if b'"trigger_event_id":"' in v
        }
        return want <= seen

    values = read_topic(s, s.topics.decisions, until=done, timeout=timeout)
    found = [Decision.model_validate_json(v) for v in values]
    return [d for d in found if d.action.trigger_event_id in ids]


def test_a_worker_serves_what_the_learner_learns_and_serves_it_again_after_a_restart(
    make_settings: Callable[..., Settings],
    start_worker: Callable[[Settings], Any],
    start_learner: Callable[[Settings], RunningWorker],
) -> None:
    midnight = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    start = midnight - 4 * DAY
    sim = JourneySimulator(400, seed=5, start=start, span=4 * DAY - timedelta(hours=1))
    history = list(sim.events())
    # Learn on three days; then, a day later than the last fit (and its hour of activation),
    # score what every served version must carry.
    cut = midnight - DAY + timedelta(hours=2)
    before = [e for e in history if e.occurred_at < cut]
    after = [e for e in history if e.occurred_at >= cut]
    triggers = {"page_view", "product_view", "search", "search_no_results", "error_page"}
    later = [e for e in after if e.type in triggers]
    assert before and len(later) > 40
    learner = LearnerConfig(min_positives=5, min_rows=50, lateness_seconds=0)
    s = make_settings(partitions=2, rules_path=RULES, reload_check_seconds=0.2,
                      feature_row_share=0.5, learner=learner)  # fmt: skip
    p = Producer(kafka_config(s, "producer"))
    for prof in sim.profiles():
        p.produce(s.topics.customer_profiles, key=prof.customer_id.encode(), value=encode(prof))
    assert p.flush(30) == 0
    publish(s, before)
    worker = start_worker(s)
    learning = start_learner(s)

    deadline = time.monotonic() + 120
    while not any(r.verdict.accepted for r in learning.worker.published):
        assert time.monotonic() < deadline, (
            f"no model accepted: {[r.verdict.reason for r in learning.worker.published]}"
        )
        assert learning.error is None, learning.error
        time.sleep(0.5)
    accepted = [r for r in learning.worker.published if r.verdict.accepted]
    served = accepted[-1]
    # The same history replayed offline learns the same releases, number for number: the
    # learner does not depend on how partitions and batches interleaved.
    offline = replay(before, sim.profiles(), rulebook=load_rulebook(RULES),
                     learner=ContactLearner(learning.worker.learner.settings),
                     sample_share=s.feature_row_share)  # fmt: skip
    assert [(r.key, r.verdict.accepted, r.model) for r in learning.worker.published] == [
        (r.key, r.verdict.accepted, r.model) for r in offline.releases
    ]
    assert served.serves_from <= cut, "the test's later events must come after its activation"
    deadline = time.monotonic() + 30
    while worker.worker.engine.contact.latest is None or (
        worker.worker.engine.contact.latest.version != served.model_version
    ):
        assert time.monotonic() < deadline, "the worker never served the learned model"
        time.sleep(0.2)
    metrics = worker.worker.metrics
    assert metrics.learned_models.labels("served")._value.get() >= 1
    assert metrics.contact_model_info.labels(served.model_version)._value.get() == 1

    half = len(after) // 2
    publish(s, after[:half])
    first = {e.event_id for e in after[:half] if e.type in triggers}
    seen = decisions_for(s, first)
    assert seen, "no decision on the later events"
    assert {d.action.contact_model_version for d in seen} == {served.model_version}
    assert all(d.action.scores.contact_risk is not None for d in seen)

    worker.stop()
    learning.stop()
    restarted = start_worker(s)  # reads the models topic again at start
    publish(s, after[half:])
    second = {e.event_id for e in after[half:] if e.type in triggers}
    again = decisions_for(s, second)
    assert again, "no decision after the restart"
    assert {d.action.contact_model_version for d in again} == {served.model_version}
    assert restarted.worker.engine.contact.latest is not None
    assert restarted.worker.engine.contact.latest.version == served.model_version


def test_a_record_on_the_models_topic_that_is_not_a_release_is_refused_and_the_rest_served(
    make_settings: Callable[..., Settings], start_worker: Callable[[Settings], Any]
) -> None:
    midnight = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    sim = JourneySimulator(250, seed=11, start=midnight - 4 * DAY, span=4 * DAY)
    learner = ContactLearner(LearnerSettings(min_positives=5, min_rows=50))
    learned = replay(list(sim.events()), sim.profiles(), rulebook=load_rulebook(RULES),
                     learner=learner, sample_share=0.5)  # fmt: skip
    accepted = [r for r in learned.releases if r.verdict.accepted]
    assert accepted
    s = make_settings(partitions=1, rules_path=RULES, reload_check_seconds=0.2)
    p = Producer(kafka_config(s, "producer"))
    p.produce(s.topics.models, b'{"not": "a release"}', b"contact_risk/garbage")
    for r in learned.releases:
        p.produce(s.topics.models, r.model_dump_json().encode(), r.key.encode())
    assert p.flush(30) == 0
    running = start_worker(s)
    metrics = running.worker.metrics
    deadline = time.monotonic() + 30
    while metrics.learned_models.labels("unreadable")._value.get() < 1:
        assert time.monotonic() < deadline, "the models topic was never read"
        time.sleep(0.2)
    assert metrics.learned_models.labels("served")._value.get() == len(accepted)
    served = [v.model.version for v in running.worker.engine.contact.served]
    assert served == [r.model_version for r in accepted]
    assert metrics.contact_model_info.labels(accepted[-1].model_version)._value.get() == 1


def test_without_the_learning_topics_the_worker_scores_and_says_what_is_missing(
    make_settings: Callable[..., Settings], start_worker: Callable[[Settings], Any]
) -> None:
    made = make_settings(
        partitions=1, rules_path=ROOT / "tests" / "data" / "policies_rulebook.yaml"
    )
    missing = made.topics.model_copy(
        update={"milestones": f"absent-{made.group_id}", "feature_rows": f"absent2-{made.group_id}"}
    )
    s = made.model_copy(update={"topics": missing})
    now = datetime.now(UTC) - timedelta(minutes=5)
    events = [
        JourneyEvent(
            event_id=f"e{i}", customer_id="c1", type=kind, occurred_at=now + timedelta(seconds=i)
        )
        for i, kind in enumerate(["session_start", "support_contact", "payment_failed", "purchase"])
    ]
    publish(s, events)
    running = start_worker(s)
    wait_committed(s, len(events), timeout=60)
    assert running.worker.outputs.learning_partitions is None
    assert running.worker.metrics.transactions.labels("committed")._value.get() >= 1
