"""The customer ledgers and the experiment report: arms, episodes, maturity, replays."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from forewarn.experiments.ledger import (
    CustomerLedger,
    ExperimentWindows,
    OutcomeProblem,
    record_decision,
    record_milestone,
    record_outcome,
    settle,
)
from forewarn.experiments.report import (
    ExperimentReport,
    ExperimentTally,
    experiment_report,
    holdout_shares,
    tally,
)
from forewarn.models.contracts import (
    ActionChannel,
    Decision,
    DecisionStatus,
    Milestone,
    Outcome,
    OutcomeKind,
    OutreachAction,
    Scores,
    SuppressionReason,
)
from forewarn.rules.policies import experiment_arm

T0 = datetime(2026, 3, 1, tzinfo=UTC)
W = ExperimentWindows()


def decision(
    customer: str,
    minutes: float,
    *,
    rule: str = "payment_recovery",
    status: DecisionStatus = DecisionStatus.emitted,
    by: SuppressionReason | None = None,
    channel: ActionChannel = ActionChannel.email,
) -> Decision:
    at = T0 + timedelta(minutes=minutes)
    action_id = f"a-{customer}-{rule}-{minutes}"
    action = OutreachAction(
        action_id=action_id,
        customer_id=customer,
        rule_id=rule,
        playbook="payment_recovery",
        channel=channel,
        priority=50,
        template="t",
        reasons=[],
        scores=Scores(friction=50.0),
        trigger_event_id=f"e-{minutes}",
        triggered_at=at,
        decided_at=at,
        expires_at=at + timedelta(hours=4),
        rulebook_version="v",
        model_version="m",
    )
    return Decision(
        arm=experiment_arm(by) if status is not DecisionStatus.shadow else None,
        decision_id=f"d-{action_id}",
        customer_id=customer,
        rule_id=rule,
        status=status,
        suppressed_by=by,
        action=action,
        at=at,
    )


def held_out(customer: str, minutes: float, rule: str = "payment_recovery") -> Decision:
    return decision(
        customer, minutes, rule=rule, status=DecisionStatus.suppressed, by=SuppressionReason.holdout
    )


def contact(customer: str, minutes: float, kind: str = "support_contact") -> Milestone:
    return Milestone(
        event_id=f"m-{customer}-{kind}-{minutes}",
        customer_id=customer,
        type=kind,
        occurred_at=T0 + timedelta(minutes=minutes),
    )


Record = Decision | Milestone | Outcome


def feed(ledgers: dict[str, CustomerLedger], record: Record) -> OutcomeProblem | None:
    ledger = ledgers.setdefault(record.customer_id, CustomerLedger(customer_id=record.customer_id))
    if isinstance(record, Decision):
        record_decision(ledger, record, W)
    elif isinstance(record, Milestone):
        record_milestone(ledger, record, W)
    else:
        return record_outcome(ledger, record, W)
    return None


def report(ledgers: dict[str, CustomerLedger], watermark: datetime) -> ExperimentReport:
    return experiment_report(tally(((led, watermark) for led in ledgers.values()), W))


def test_arms_count_once_their_contact_window_has_closed() -> None:
    ledgers: dict[str, CustomerLedger] = {}
    for i in range(6):
        feed(ledgers, decision(f"t{i}", 0))
    for i in range(4):
        feed(ledgers, held_out(f"h{i}", 0))
    feed(ledgers, contact("t0", 30))  # one treated customer contacts support
    for i in range(3):
        feed(ledgers, contact(f"h{i}", 60))  # three held-out ones do
    feed(ledgers, contact("h3", 60 * 25))  # after the window: not counted

    before = report(ledgers, T0 + timedelta(hours=23))
    rule = before.rules[0]
    assert (rule.treated, rule.holdout) == (0, 0)
    assert (rule.pending_treated, rule.pending_holdout) == (6, 4)

    after = report(ledgers, T0 + timedelta(hours=24, minutes=11))
    rule = after.rules[0]
    assert (rule.treated, rule.holdout, rule.pending_treated) == (6, 4, 0)
    contact_rates = rule.measures["contact"]
    assert (contact_rates.treated_events, contact_rates.holdout_events) == (1, 3)
    assert rule.contact_rate_difference.estimate == pytest.approx(1 / 6 - 3 / 4, abs=1e-6)
    assert rule.contacts_avoided_per_100_actions.estimate == pytest.approx(
        100 * (3 / 4 - 1 / 6), abs=1e-4
    )
    # the cancellation window (14 days) is still open
    assert rule.measures["cancellation"].treated == 0


def test_only_assignments_are_in_the_experiment() -> None:
    ledgers: dict[str, CustomerLedger] = {}
    feed(ledgers, decision("a", 0))
    feed(ledgers, decision("b", 0, status=DecisionStatus.suppressed, by=SuppressionReason.expired))
    feed(ledgers, decision("c", 0, status=DecisionStatus.shadow))
    feed(ledgers, decision("d", 0, status=DecisionStatus.suppressed, by=SuppressionReason.consent))
    # after the holdout check: assigned to treatment (intention to treat)
    for by in (SuppressionReason.arbitration, SuppressionReason.frequency_cap):
        feed(ledgers, decision(f"e-{by}", 0, status=DecisionStatus.suppressed, by=by))
    feed(ledgers, held_out("f", 0))
    rule = report(ledgers, T0 + timedelta(days=30)).rules[0]
    assert (rule.treated, rule.holdout) == (3, 1)
    # the why view still has every decision
    assert len(ledgers["b"].recent) == 1


def test_an_episode_counts_once_however_often_the_rule_fires_in_it() -> None:
    """A held-out customer is not cooled down and fires again; it is one episode."""
    ledgers: dict[str, CustomerLedger] = {}
    for minutes in (0, 30, 90, 600):
        feed(ledgers, held_out("h", minutes))
    feed(ledgers, held_out("h", 60 * 25))  # a new episode once the window is over
    feed(ledgers, decision("t", 0))
    rule = report(ledgers, T0 + timedelta(days=3)).rules[0]
    assert (rule.treated, rule.holdout) == (1, 2)


def test_settling_changes_no_number_and_forgets_the_detail() -> None:
    ledgers: dict[str, CustomerLedger] = {}
    for i in range(5):
        feed(ledgers, decision(f"t{i}", i))
        feed(ledgers, held_out(f"h{i}", i))
        feed(ledgers, contact(f"h{i}", 100 + i))
        feed(ledgers, contact(f"t{i}", 60 * 24 * 3, "subscription_cancelled"))
        at = T0 + timedelta(minutes=i + 1)
        aid = f"a-t{i}-payment_recovery-{i}"
        feed(ledgers, Outcome(action_id=aid, customer_id=f"t{i}", kind="delivered", at=at))
    late = T0 + timedelta(days=16)
    before = report(ledgers, late).model_dump()
    for ledger in ledgers.values():
        assert settle(ledger, late, W) == []
    assert all(not led.episodes and not led.actions and not led.seen for led in ledgers.values())
    after = report(ledgers, late).model_dump()
    assert after == before
    rule = after["rules"][0]
    assert rule["measures"]["cancellation"]["treated_events"] == 5
    assert rule["funnel"]["outcomes"] == {OutcomeKind.delivered: 5}


def test_outcomes_count_once_and_impossible_ones_are_refused() -> None:
    ledgers: dict[str, CustomerLedger] = {}
    d = decision("t", 10)
    feed(ledgers, d)
    aid = d.action.action_id
    at = T0 + timedelta(minutes=12)
    for _ in range(3):
        assert feed(ledgers, Outcome(action_id=aid, customer_id="t", kind="opened", at=at)) is None
    assert ledgers["t"].actions[aid].outcomes == {OutcomeKind.opened: at}
    early = Outcome(action_id=aid, customer_id="t", kind="clicked", at=T0)
    assert feed(ledgers, early) is OutcomeProblem.outcome_before_action
    ledger = ledgers["t"]
    other = Outcome(action_id=aid, customer_id="x", kind="clicked", at=at)
    assert record_outcome(ledger, other, W) is OutcomeProblem.customer_mismatch


def test_an_outcome_before_its_decision_waits_for_it_then_gives_up() -> None:
    ledgers: dict[str, CustomerLedger] = {}
    d = decision("t", 0)
    at = T0 + timedelta(minutes=1)
    first = Outcome(action_id=d.action.action_id, customer_id="t", kind="delivered", at=at)
    assert feed(ledgers, first) is None
    lost = Outcome(action_id="never", customer_id="t", kind="delivered", at=T0)
    feed(ledgers, lost)
    assert settle(ledgers["t"], T0 + timedelta(minutes=5), W) == []
    feed(ledgers, d)
    # the customer's decisions have not gone past the grace: it may still come
    assert settle(ledgers["t"], T0 + timedelta(minutes=20), W) == []
    assert OutcomeKind.delivered in ledgers["t"].actions[d.action.action_id].outcomes
    feed(ledgers, decision("t", 16))  # a later decision: the lost one's cannot come any more
    refused = settle(ledgers["t"], T0 + timedelta(minutes=20), W)
    assert refused == [(lost, OutcomeProblem.unknown_action)]


def test_an_outcome_whose_customer_is_not_heard_of_again_is_refused_at_its_deadline() -> None:
    ledgers: dict[str, CustomerLedger] = {}
    lost = Outcome(action_id="never", customer_id="q", kind="opened", at=T0)
    feed(ledgers, lost)
    assert settle(ledgers["q"], T0 + W.retention - timedelta(seconds=1), W) == []
    assert settle(ledgers["q"], T0 + W.retention, W) == [(lost, OutcomeProblem.unknown_action)]
    assert ledgers["q"].orphans == []


def test_coverage_and_lead_time_match_evaluates_definition() -> None:
    ledgers: dict[str, CustomerLedger] = {}
    feed(ledgers, decision("a", 0))
    feed(ledgers, decision("a", 50, rule="checkout_assist"))
    feed(ledgers, contact("a", 58))  # the latest action before it: 8 minutes
    feed(ledgers, contact("b", 5))  # nobody reached b
    cov = report(ledgers, T0 + timedelta(hours=1)).coverage
    assert (cov.contacts, cov.anticipated, cov.median_lead_minutes) == (2, 1, 8.0)


def test_the_sample_ratio_check_counts_customers_against_the_configured_share() -> None:
    ledgers: dict[str, CustomerLedger] = {}
    for i in range(500):
        feed(ledgers, decision(f"t{i}", 0))
        feed(ledgers, held_out(f"h{i}", 0))
        feed(ledgers, held_out(f"h{i}", 60 * 25))  # a second episode: still one customer
    late = T0 + timedelta(days=20)
    counted = tally(((x, late) for x in ledgers.values()), W)
    bad = experiment_report(counted, {"payment_recovery": 0.1})
    good = experiment_report(counted, {"payment_recovery": 0.5})
    assert (good.rules[0].treated_customers, good.rules[0].holdout_customers) == (500, 500)
    assert (good.rules[0].treated, good.rules[0].holdout) == (500, 1000)
    assert bad.rules[0].sample_ratio_mismatch and not good.rules[0].sample_ratio_mismatch


records = st.lists(
    st.one_of(
        st.builds(decision, st.sampled_from("abc"), st.integers(0, 3000)),
        st.builds(held_out, st.sampled_from("abc"), st.integers(0, 3000)),
        st.builds(contact, st.sampled_from("abc"), st.integers(0, 4000)),
    ),
    max_size=25,
).map(lambda rs: sorted(rs, key=lambda r: r.action.triggered_at if isinstance(r, Decision)
                        else r.occurred_at))  # fmt: skip


@settings(max_examples=100, deadline=None)
@given(records, st.integers(0, 25), st.integers(0, 60 * 24 * 30))
def test_a_replay_from_any_point_changes_nothing(
    stream: list[Record], replay_from: int, settle_at: int
) -> None:
    """At-least-once delivery: after a crash the records since the last commit come again,
    and a settle may have run in between. The report is the same as one clean pass."""
    late = T0 + timedelta(days=20)
    clean: dict[str, CustomerLedger] = {}
    for r in stream:
        feed(clean, r)
    replayed: dict[str, CustomerLedger] = {}
    for r in stream:
        feed(replayed, r)
    for ledger in replayed.values():
        settle(ledger, T0 + timedelta(minutes=settle_at), W)
    for r in stream[replay_from:]:
        feed(replayed, r)
    assert report(replayed, late).model_dump() == report(clean, late).model_dump()


def test_tallies_from_several_workers_add_up_to_one() -> None:
    ledgers: dict[str, CustomerLedger] = {}
    for i in range(8):
        feed(ledgers, decision(f"c{i}", i) if i % 3 else held_out(f"c{i}", i))
        feed(ledgers, contact(f"c{i}", 20 + i))
    late = T0 + timedelta(days=2)
    items = list(ledgers.values())
    whole = tally(((x, late) for x in items), W)
    merged = tally(((x, late) for x in items[:3]), W)
    merged.merge(tally(((x, late) for x in items[3:]), W))
    assert experiment_report(merged).model_dump() == experiment_report(whole).model_dump()
    assert (
        whole.model_dump()
        == ExperimentTally.model_validate_json(whole.model_dump_json()).model_dump()
    )


def test_holdout_shares_combine_the_global_and_the_rule_holdout() -> None:
    from forewarn.rules.rulebook import load_rulebook

    book = load_rulebook()
    shares = holdout_shares(book)
    g = book.holdout_percent / 100
    for rule in book.rules:
        r = rule.policies.holdout_percent / 100
        assert shares[rule.id] == pytest.approx(g + r - g * r)
