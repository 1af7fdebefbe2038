"""The contact-risk model served and learned (issue 11): the learner's labels, refits and
verdicts, model versions applied at the stream times they name, feature rows and milestones,
contact risk in rules, and additive explanations. No broker: the engine, the harness and the
pure learner."""

from __future__ import annotations

import hashlib
import math
import random
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from forewarn.models.contracts import (
    ALL_CONSENT,
    FeatureRow,
    JourneyEvent,
    Milestone,
)
from forewarn.models.features import CONTACT_FEATURE_SET, CONTACT_FEATURES
from forewarn.models.releases import ModelRelease
from forewarn.models.risk import (
    ArtifactError,
    ClassBalance,
    HeldOutMetrics,
    LabelDefinition,
    LinearModel,
    ModelCard,
    RiskModel,
    TrainingData,
    default_model_path,
    load_risk_model,
    model_file_bytes,
    save_risk_model,
)
from forewarn.models.state import CustomerState
from forewarn.models.state_codec import decode_state, encode_state
from forewarn.offline.replay import replay
from forewarn.offline.simulator import JourneySimulator
from forewarn.pipeline.harness import Harness
from forewarn.pipeline.learner import ContactLearner, LearnerSettings
from forewarn.rules.rulebook import load_rulebook, load_rulebook_text
from tests.conftest import ROOT

T0 = datetime(2026, 3, 2, tzinfo=UTC)
HOUR = 3600.0
DAY = 86_400.0
CONTACT_RULES = ROOT / "tests" / "data" / "contact_rulebook.yaml"
N = len(CONTACT_FEATURES)


def contact_model(version: str, errors_weight: float = 2.0, intercept: float = -3.0) -> RiskModel:
    """A hand-made contact-risk model: the risk rises with the errors of the last hour."""
    coef = [0.0] * N
    coef[CONTACT_FEATURES.index("errors_1h")] = errors_weight
    linear = LinearModel(features=list(CONTACT_FEATURES), mean=[0.0] * N, scale=[1.0] * N,
                         coef=coef, intercept=intercept)  # fmt: skip
    card = ModelCard(
        model_version=version,
        created_at=T0,
        model_kind="hand-made",
        target="contact",
        model_sha256=hashlib.sha256(model_file_bytes(linear)).hexdigest(),
        features=list(CONTACT_FEATURES),
        friction_version="any",
        training_data=TrainingData(sha256="0" * 64, events=0, customers=0, start=T0, end=T0),
        label=LabelDefinition(definition="test", horizon_days=1 / 48, snapshot_every_hours=0),
        class_balance=ClassBalance(positives=0, negatives=0, rate=0.0),
        held_out=HeldOutMetrics(roc_auc=0.5, pr_auc=0, brier=0, calibration=[],
                                operating_threshold=0.5, precision=0, recall=0, rows=0),
    )  # fmt: skip
    return RiskModel(card, linear, Path(version))


def ev(cid: str, kind: str, at: datetime, n: int) -> JourneyEvent:
    return JourneyEvent(event_id=f"{cid}-{n}", customer_id=cid, type=kind, occurred_at=at,
                        session_id="s1")  # fmt: skip


def row(cid: str, at: float, errors: float, n: int = 0, weight: float = 1.0) -> FeatureRow:
    x = [0.0] * N
    x[CONTACT_FEATURES.index("errors_1h")] = errors
    return FeatureRow(event_id=f"{cid}-{n}", customer_id=cid,
                      occurred_at=datetime.fromtimestamp(at, UTC), weight=weight,
                      feature_set=CONTACT_FEATURE_SET, features=x)  # fmt: skip


def contact(cid: str, at: float) -> Milestone:
    return Milestone(event_id=f"{cid}-c{at}", customer_id=cid, type="support_contact",
                     occurred_at=datetime.fromtimestamp(at, UTC))  # fmt: skip


def world(seed: int, days: int, trouble_days: range) -> tuple[list[FeatureRow], list[Milestone]]:
    """Rows and contacts where a contact follows an error within the hour, half the time,
    on ``trouble_days`` (other days: contacts at random)."""
    rng = random.Random(seed)
    rows, contacts = [], []
    start = T0.timestamp()
    for i in range(days * 400):
        at = start + i * DAY / 400
        cid = f"c{rng.randrange(300)}"
        errors = float(rng.random() < 0.2)
        rows.append(row(cid, at, errors, i))
        day = int((at - start) // DAY)
        p = 0.5 if errors and day in trouble_days else 0.03
        if rng.random() < p:
            contacts.append(contact(cid, at + rng.uniform(60, 1800)))
    return rows, contacts


def learn(
    rows: list[FeatureRow], contacts: list[Milestone], learner: ContactLearner
) -> list[ModelRelease]:
    out: list[ModelRelease] = []
    for r in rows:
        learner.row(r)
    for c in contacts:
        learner.milestone(c)
    end = max(r.occurred_at.timestamp() for r in rows) + HOUR
    out += learner.advance(end)
    return out


def test_the_learner_fits_on_a_stream_time_grid_and_serves_after_the_activation_delay() -> None:
    rows, contacts = world(1, 4, range(0, 4))
    learner = ContactLearner(LearnerSettings(min_positives=20, min_rows=100))
    learner.advance(T0.timestamp())
    releases = learn(rows, contacts, learner)
    assert [r.fitted_at for r in releases] == [T0 + timedelta(days=d) for d in (1, 2, 3, 4)]
    first = next(r for r in releases if r.verdict.accepted)
    assert first.serves_from == first.fitted_at + timedelta(hours=1)
    assert first.card.target == "contact" and first.card.training_data.end == first.fitted_at
    model = first.risk_model()
    x = np.zeros((2, N))
    x[1, CONTACT_FEATURES.index("errors_1h")] = 1
    low, high = model.score(x)
    assert high > 3 * low, "it learned that an error in the last hour precedes a contact"


def test_a_window_without_enough_labels_never_replaces_the_champion() -> None:
    rows, contacts = world(2, 3, range(0, 3))
    learner = ContactLearner(LearnerSettings(min_positives=20, min_rows=100))
    learner.advance(T0.timestamp())
    accepted = [r for r in learn(rows, contacts, learner) if r.verdict.accepted]
    assert accepted
    champion = learner.champion
    assert champion is not None
    # an outage: a day with only a few rows, and no contacts at all
    start = T0.timestamp() + 3 * DAY + 2 * HOUR
    few = [row(f"q{i}", start + i * 60, 0.0, 10_000 + i) for i in range(20)]
    for r in few:
        learner.row(r)
    (refusal,) = learner.advance(T0.timestamp() + 4 * DAY + HOUR)
    assert not refusal.verdict.accepted
    assert learner.champion is champion
    assert refusal.champion_version == champion.version


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 10_000), st.randoms(use_true_random=False))
def test_labels_do_not_depend_on_how_rows_and_contacts_interleave(
    seed: int, shuffle: random.Random
) -> None:
    rows, contacts = world(seed, 2, range(0, 2))
    ordered = ContactLearner(LearnerSettings(min_positives=5, min_rows=20))
    for r in rows:
        ordered.row(r)
    for c in contacts:
        ordered.milestone(c)
    ordered.advance(T0.timestamp() + 3 * DAY)
    mixed = ContactLearner(LearnerSettings(min_positives=5, min_rows=20))
    inputs: list[FeatureRow | Milestone] = [*rows, *contacts]
    shuffle.shuffle(inputs)
    for x in inputs:
        if isinstance(x, FeatureRow):
            mixed.row(x)
        else:
            mixed.milestone(x)
    mixed.advance(T0.timestamp() + 3 * DAY)
    assert list(mixed.labelled) == list(ordered.labelled)
    assert sum(r.label for r in ordered.labelled) > 0


def test_a_restarted_learner_keeps_its_champion_and_does_not_refit_the_past() -> None:
    rows, contacts = world(3, 4, range(0, 4))
    first = ContactLearner(LearnerSettings(min_positives=20, min_rows=100))
    first.advance(T0.timestamp())
    history = learn(rows, contacts, first)
    again = ContactLearner(LearnerSettings(min_positives=20, min_rows=100))
    again.restore(history)
    assert again.champion is not None and first.champion is not None
    assert again.champion.version == first.champion.version
    assert learn(rows, contacts, again) == [], "the fits of the history are not run again"


def test_a_release_whose_numbers_do_not_match_its_card_is_refused() -> None:
    rows, contacts = world(4, 3, range(0, 3))
    learner = ContactLearner(LearnerSettings(min_positives=20, min_rows=100))
    learner.advance(T0.timestamp())
    good = next(r for r in learn(rows, contacts, learner) if r.verdict.accepted)
    tampered = good.model_copy(
        update={"model": good.model.model_copy(update={"intercept": good.model.intercept + 1})}
    )
    with pytest.raises(ValueError, match="model_sha256"):
        tampered.risk_model()


def test_each_version_scores_the_events_from_the_time_it_names() -> None:
    h = Harness(rulebook=load_rulebook(CONTACT_RULES), start=T0, taps=True)
    h.profile("ann", consent=ALL_CONSENT)
    h.engine.use(contact=contact_model("v1"))
    h.engine.serve(contact_model("v2", errors_weight=3.0), (T0 + timedelta(hours=2)).timestamp())
    events = [ev("ann", "page_view", T0 + timedelta(minutes=50 * i), i) for i in range(5)]
    h.at(events[-1].occurred_at)
    result = h.feed(*events)  # one batch across the switch
    versions = [d.action.contact_model_version for d in result.decisions]
    assert versions == ["v1", "v1", "v1", "v2", "v2"]
    assert all(d.action.scores.contact_risk is not None for d in result.decisions)


def test_without_a_contact_model_a_rule_that_needs_the_risk_never_fires() -> None:
    h = Harness(rulebook=load_rulebook(CONTACT_RULES), start=T0)
    h.profile("ann", consent=ALL_CONSENT)
    assert h.feed(ev("ann", "page_view", T0, 1)).decisions == []


def test_a_replay_with_the_learned_model_history_decides_what_the_learning_replay_did() -> None:
    sim = JourneySimulator(250, seed=11, start=T0, span=timedelta(days=4))
    events, profiles = list(sim.events()), sim.profiles()
    book = load_rulebook(CONTACT_RULES)
    learner = ContactLearner(LearnerSettings(min_positives=5, min_rows=50))
    learned = replay(events, profiles, rulebook=book, sample_share=0.5, learner=learner)
    assert any(r.verdict.accepted for r in learned.releases)
    again = replay(events, profiles, rulebook=book, releases=learned.releases)
    key = [(d.decision_id, d.status, d.action.contact_model_version) for d in learned.decisions]
    assert (
        key
        and [(d.decision_id, d.status, d.action.contact_model_version) for d in again.decisions]
        == key
    )
    assert len({v for _, _, v in key}) >= 2, "decisions under more than one learned version"


def test_feature_rows_keep_every_moment_with_trouble_and_a_weighted_share_of_the_rest() -> None:
    sim = JourneySimulator(150, seed=12, start=T0, span=timedelta(days=2))
    events = list(sim.events())
    h = Harness(start=T0)
    h.engine.feature_rows = 0.1
    h.at(events[-1].occurred_at)
    result = h.feed(*events)
    rows = result.feature_rows
    trouble = [r for r in rows if r.weight == 1.0]
    sampled = [r for r in rows if r.weight != 1.0]
    assert trouble and sampled and all(r.weight == pytest.approx(10.0) for r in sampled)
    errors = CONTACT_FEATURES.index("errors_1h")
    left = CONTACT_FEATURES.index("checkout_without_purchase_1h")
    assert all(r.features[errors] > 0 or r.features[left] > 0 for r in trouble)
    eligible = len([e for e in events if e.type != "support_contact"]) - len(trouble)
    assert 0.07 < len(sampled) / eligible < 0.13
    contacts = {e.event_id for e in events if e.type == "support_contact"}
    assert not contacts & {r.event_id for r in rows}, "contacts are predicted, not moments"
    milestones = {m.event_id for m in result.milestones}
    kinds = {"support_contact", "purchase", "subscription_cancelled"}
    assert milestones == {e.event_id for e in events if e.type in kinds}
    h2 = Harness(start=T0)
    h2.engine.feature_rows = 0.1
    h2.at(events[-1].occurred_at)
    assert h2.feed(*events).feature_rows == rows, "the same sample in every run"


def test_contact_risk_crossings_requirements_and_conditions_in_rules() -> None:
    book = load_rulebook_text(
        """
version: t
rules:
  - id: crossing
    triggers: {scores: {contact_risk: 0.5}}
    action: {playbook: p, channels: [email], template: t, priority: 10, ttl: 1d}
  - id: required
    triggers: {events: [error_page]}
    require: {contact_risk_at_least: 0.9}
    when: "scores.contact_risk > scores.contact_risk_before"
    action: {playbook: p, channels: [email], template: t, priority: 5, ttl: 1d}
""",
        "t.yaml",
    )
    h = Harness(rulebook=book, start=T0)
    h.profile("ann", consent=ALL_CONSENT)
    h.engine.use(contact=contact_model("v1", errors_weight=3.0, intercept=-2.0))
    first = h.feed(ev("ann", "error_page", T0, 1))  # risk 0.73: crosses 0.5
    assert [d.rule_id for d in first.decisions] == ["crossing"]
    (why,) = [r.detail for r in first.actions[0].reasons if r.signal == "trigger"]
    assert why.startswith("contact risk rose from 0.0% to 73")
    assert any(r.signal == "contact_risk" for r in first.actions[0].reasons)
    h.advance(60)
    second = h.feed(ev("ann", "error_page", T0 + timedelta(minutes=1), 2))  # 0.98, no crossing
    assert [d.rule_id for d in second.decisions] == ["required"]
    assert h.state("ann") is not None and h.state("ann").last_contact_risk > 0.97  # type: ignore[union-attr]


def test_contact_risk_reasons_add_up_to_the_score() -> None:
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(400, N)), rng.integers(0, 2, size=400)
    from forewarn.models.fitting import fit_linear

    model = RiskModel(contact_model("v").card, fit_linear(x, y), Path("v"))
    parts, intercept = model.contributions(x[:5])
    logit = parts.sum(axis=1) + intercept
    assert np.allclose(1 / (1 + np.exp(-logit)), model.score(x[:5]))


def test_a_contact_model_is_refused_where_a_churn_model_is_expected_and_back(
    tmp_path: Path,
) -> None:
    m = contact_model("c1")
    save_risk_model(tmp_path / "c", m.linear, m.card)
    assert load_risk_model(tmp_path / "c", target="contact").version == "c1"
    with pytest.raises(ArtifactError, match=r"card.json: target: a contact-risk model"):
        load_risk_model(tmp_path / "c")
    with pytest.raises(ArtifactError, match=r"card.json: target: a churn-risk model"):
        load_risk_model(default_model_path(), target="contact")


def test_the_contact_risk_travels_with_the_state_and_old_states_read_as_zero() -> None:
    s = CustomerState("ann", last_contact_risk=0.42)
    assert decode_state(encode_state(s)).last_contact_risk == 0.42
    import msgpack

    old = msgpack.unpackb(encode_state(CustomerState("bob")), raw=False, strict_map_key=False)
    assert decode_state(msgpack.packb(old[:-1], use_bin_type=True)).last_contact_risk == 0.0
    assert math.isclose(CustomerState("c", last_contact_risk=0.3).copy().last_contact_risk, 0.3)


def test_rows_that_cannot_be_learned_from_are_ignored_not_raised() -> None:
    learner = ContactLearner(LearnerSettings())
    good = row("ann", T0.timestamp(), 1.0)
    short = good.model_copy(update={"features": good.features[:3]})
    other = good.model_copy(update={"feature_set": "contact-000000000000"})
    for r in (short, other):
        learner.row(r)
    assert learner.ignored == 2 and learner.waiting == 0
    with pytest.raises(ValueError, match="finite"):
        FeatureRow.model_validate_json(good.model_dump_json().replace("1.0", "NaN", 1))
    learner.row(good)
    assert learner.waiting == 1


def test_a_late_row_is_refused_and_early_contacts_stay_until_no_row_can_need_them() -> None:
    """Rows may arrive after a contact that follows them (another partition, read later):
    a row that is still accepted is labelled from every contact in its horizon."""
    learner = ContactLearner(LearnerSettings(horizon=100))
    learner.advance(400.0)
    learner.row(row("z", 460.0, 0.0))  # waiting, later than the contact below
    learner.milestone(contact("x", 450.0))
    learner.advance(420.0)
    learner.row(row("x", 440.0, 0.0))  # arrives after the contact; its horizon is open
    learner.advance(1000.0)
    assert {(r.customer_id, r.label) for r in learner.labelled} == {("x", 1), ("z", 0)}
    late = ContactLearner(LearnerSettings(horizon=100))
    late.advance(1000.0)
    late.row(row("y", 800.0, 0.0))  # its horizon ended before stream time: refused
    assert late.ignored == 1 and late.waiting == 0


def test_a_model_from_a_file_serves_before_the_learned_versions_not_instead_of_them() -> None:
    h = Harness(rulebook=load_rulebook(CONTACT_RULES), start=T0)
    h.profile("ann", consent=ALL_CONSENT)
    h.engine.serve(contact_model("learned"), (T0 + timedelta(hours=2)).timestamp())
    h.engine.use(contact=contact_model("file"))
    assert [v.model.version for v in h.engine.contact.served] == ["file", "learned"]
    events = [ev("ann", "page_view", T0 + timedelta(hours=i), i) for i in range(4)]
    h.at(events[-1].occurred_at)
    versions = [d.action.contact_model_version for d in h.feed(*events).decisions]
    assert versions == ["file", "file", "learned", "learned"]
    h.engine.use(contact=None)
    assert [v.model.version for v in h.engine.contact.served] == ["learned"]


def test_a_release_learned_with_another_friction_config_is_refused() -> None:
    rows, contacts = world(4, 3, range(0, 3))
    learner = ContactLearner(LearnerSettings(min_positives=20, min_rows=100,
                                             friction_version="friction-v1"))  # fmt: skip
    learner.advance(T0.timestamp())
    good = next(r for r in learn(rows, contacts, learner) if r.verdict.accepted)
    assert good.risk_model("friction-v1").version == good.model_version
    with pytest.raises(ValueError, match="friction_version"):
        good.risk_model("friction-v9")


def test_learning_records_go_to_the_partition_of_their_event() -> None:
    from forewarn.streams.scoring.outputs import Limits, OutputTopics, batch_records

    sim = JourneySimulator(60, seed=13, start=T0, span=timedelta(days=1))
    events = [e for e in sim.events()][:400]
    h = Harness(start=T0)
    h.engine.feature_rows = 1.0
    h.at(events[-1].occurred_at)
    raw = [h.event_record(e.model_dump_json().encode(), e.customer_id) for e in events]
    raw = [r.__class__(r.topic, 5, r.offset, r.key, r.value) for r in raw]  # partition 5
    result = h.engine.process(raw)
    assert result.feature_rows and set(result.feature_rows.partitions) == {5}
    topics = OutputTopics("a", "d", "dlq", "s", "m", "f", learning_partitions=(2, 3))
    out = batch_records(result, {}, topics, Limits(1_000_000), T0).records
    assert {r.partition for r in out if r.topic == "f"} == {5 % 3}
    assert {r.partition for r in out if r.topic == "m"} <= {5 % 2}
