"""The closed loop offline: simulated customers respond to what the shipped rulebook sends,
and the experiment finds the effects the simulator put in, and none where it put none."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from forewarn.models.contracts import JourneyEvent, OutcomeKind
from forewarn.offline.experiment import ClosedLoop, closed_loop_experiment, format_closed_loop
from forewarn.offline.replay import replay
from forewarn.offline.response import TRUE_EFFECTS, Responder, TrueEffect
from forewarn.offline.simulator import JourneySimulator
from forewarn.rules.rulebook import (
    Rulebook,
    default_rulebook_path,
    load_rulebook_text,
    with_rule_holdouts,
)

START = datetime(2026, 3, 1, tzinfo=UTC)
DAYS = 14


def per_rule_holdouts(percent: float) -> Rulebook:
    """The shipped rulebook with every rule holding out its own share of customers: each
    rule's arms differ only by that rule's action."""
    text = with_rule_holdouts(default_rulebook_path().read_text(), percent)
    return load_rulebook_text(text, "per-rule-holdouts.yaml")


@pytest.fixture(scope="module")
def loop() -> ClosedLoop:
    book = per_rule_holdouts(30)
    sim = JourneySimulator(2000, seed=21, start=START, span=timedelta(days=DAYS))
    responder = Responder()
    out = replay(list(sim.events()), sim.profiles(), rulebook=book, responder=responder,
                 batch_size=50)  # fmt: skip
    return closed_loop_experiment(out, book, responder, START + timedelta(days=DAYS))


def test_the_experiment_finds_the_effects_the_simulator_put_in(loop: ClosedLoop) -> None:
    by_rule = {r.rule_id: r for r in loop.rules}
    detected = []
    for rule in loop.rules:
        rr = rule.measured.measures["contact"].risk_ratio
        assert rr.low is not None and rr.high is not None, rule.rule_id
        truth = 1 - rule.true_contact_effect
        # the interval holds the truth per action (the measured ratio is diluted towards 1
        # where treated episodes got no action, hence the slack below)
        assert rr.low <= truth + 0.05 and truth <= rr.high, (rule.rule_id, rr, truth)
        if rule.true_contact_effect == 0:
            assert rr.low < 1 < rr.high, (rule.rule_id, rr)
        elif rr.high < 1:
            detected.append(rule.rule_id)
    # 2,000 customers for two weeks detect the strongest effect; the others need more
    # (their intervals are reported with the minimum detectable effect)
    assert "payment_recovery" in detected
    assert by_rule["first_trouble"].true_contact_effect == 0  # a useless rule, visible as such
    assert loop.prevented["payment_recovery"] > 0
    assert "agent_callback" not in loop.prevented


def test_the_simulated_tool_reports_a_funnel_and_the_report_counts_it(loop: ClosedLoop) -> None:
    funnel = {r.rule_id: r.measured.funnel for r in loop.rules}
    for f in funnel.values():
        delivered = f.outcomes.get(OutcomeKind.delivered, 0)
        bounced = f.outcomes.get(OutcomeKind.bounced, 0)
        assert delivered + bounced == f.actions
        assert f.outcomes.get(OutcomeKind.opened, 0) <= delivered
        assert f.outcomes.get(OutcomeKind.clicked, 0) <= f.outcomes.get(OutcomeKind.opened, 0)
    assert sum(f.outcomes.get(OutcomeKind.opened, 0) for f in funnel.values()) > 0
    text = format_closed_loop(loop)
    assert "payment_recovery" in text and "0.60" in text


def test_a_responder_prevents_only_within_the_window_after_the_action_arrives() -> None:
    from tests.unit.test_experiments import decision

    r = Responder({"payment_recovery": TrueEffect(contact=1.0)})
    action = decision("c1", 0).action  # playbook payment_recovery at T0 = 2026-03-01
    r.treat(action)

    def contact(minutes: float, customer: str = "c1") -> JourneyEvent:
        at = action.triggered_at + timedelta(minutes=minutes)
        return JourneyEvent(event_id=f"e{minutes}", customer_id=customer, type="support_contact",
                            occurred_at=at)  # fmt: skip

    assert r.keeps(contact(1))  # before the action arrives (2 minutes)
    assert not r.keeps(contact(30))
    assert r.keeps(contact(25 * 60))  # after the window
    assert r.keeps(contact(30, customer="c2"))
    assert TRUE_EFFECTS["agent_callback"].contact == 0
