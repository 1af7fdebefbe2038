"""Scenarios on the pure engine: feed events, advance the clock, assert actions."""

from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from forewarn.models.contracts import (
    Consent,
    DecisionStatus,
    SuppressionReason,
)
from forewarn.models.state import CustomerState
from forewarn.models.state_codec import encode_state
from forewarn.pipeline.clocks import ManualClock
from forewarn.pipeline.codecs import RawRecord, encode
from forewarn.pipeline.harness import Harness
from forewarn.pipeline.stores import MemoryStore
from forewarn.rules.decide import action_id
from forewarn.rules.rulebook import Rulebook, load_rulebook
from tests.conftest import POLICIES_RULEBOOK, T0, event

ALL = Consent(email=True, sms=True, push=True, in_app=True, phone=True)


def scenario(rulebook: Rulebook | None = None, clock: ManualClock | None = None) -> Harness:
    """The shipped harness on the frozen policies rulebook, its clock at ``T0``."""
    return Harness(
        rulebook=rulebook or load_rulebook(POLICIES_RULEBOOK), clock=clock or ManualClock(T0)
    )


@pytest.fixture
def sc() -> Harness:
    return scenario()


def test_failed_payment_gets_a_recovery_action_with_reasons(sc: Harness) -> None:
    sc.profile("ann", consent=ALL)
    res = sc.feed(
        event("ann", "checkout_started", T0, n=1),
        event(
            "ann",
            "payment_failed",
            T0 + timedelta(seconds=30),
            n=2,
            order_id="o-1",
            amount=59.9,
            secret_note="never copied",
        ),
    )
    (a,) = res.actions
    assert (a.rule_id, a.channel.value, a.transactional) == ("payment_recovery", "push", True)
    assert a.attributes == {"order_id": "o-1", "amount": 59.9}
    assert a.reasons[0].detail == "triggered by payment failed"
    assert a.reasons[1].signal == "payment_trouble"
    assert a.reasons[1].detail == "failed payments: 1 in the last 24 h"
    assert a.expires_at - a.triggered_at == timedelta(hours=2)
    assert a.decided_at == T0
    assert a.action_id == action_id("payment_recovery", "ann", "ann-payment_failed-2")
    assert [d.status for d in res.decisions] == [DecisionStatus.emitted]


def test_consent_falls_through_the_channel_list(sc: Harness) -> None:
    sc.profile("bob", consent=Consent(sms=True))
    (a,) = sc.feed(event("bob", "payment_failed", T0, n=1)).actions
    assert a.channel.value == "sms"  # push and email not consented


def test_no_profile_or_no_consent_or_do_not_contact_suppresses(sc: Harness) -> None:
    sc.profile("dnc", consent=ALL, do_not_contact=True)
    sc.profile("none", consent=Consent())
    res = sc.feed(*(event(c, "delivery_delayed", T0, n=1) for c in ("dnc", "none", "ghost")))
    assert res.actions == []
    why = {d.customer_id: (d.suppressed_by, d.detail) for d in res.decisions}
    assert why["dnc"][0] is SuppressionReason.do_not_contact
    assert why["none"][0] is SuppressionReason.consent
    assert why["ghost"] == (SuppressionReason.consent, "no profile yet")


def test_cooldown_then_allowed_again_after_it_passes(sc: Harness) -> None:
    sc.profile("cy", consent=ALL)
    assert len(sc.feed(event("cy", "delivery_delayed", T0, n=1)).actions) == 1
    later = T0 + timedelta(hours=47)
    sc.clock.set(later)
    res = sc.feed(event("cy", "delivery_delayed", later, n=2))
    assert res.decisions[0].suppressed_by is SuppressionReason.cooldown
    assert res.decisions[0].detail == "rule reached this customer 47 h ago"
    sc.clock.advance(2 * 3600)
    res = sc.feed(event("cy", "delivery_delayed", T0 + timedelta(hours=49), n=3))
    assert [a.rule_id for a in res.actions] == ["delivery_apology"]


def test_arbitration_keeps_the_highest_priority_per_trigger(sc: Harness) -> None:
    sc.profile("dee", consent=ALL)
    # three errors in an hour with high friction: agent_callback (95) beats payment_recovery (90)
    res = sc.feed(
        event("dee", "error_page", T0, n=1),
        event("dee", "app_crash", T0 + timedelta(minutes=1), n=2),
        event("dee", "payment_failed", T0 + timedelta(minutes=2), n=3),
    )
    assert [a.rule_id for a in res.actions] == ["agent_callback"]
    lost = [d for d in res.decisions if d.suppressed_by is SuppressionReason.arbitration]
    assert lost and all(d.detail == "agent_callback took priority" for d in lost)
    assert {d.rule_id for d in lost} >= {"payment_recovery"}


def test_checkout_assist_needs_the_customer_in_checkout(sc: Harness) -> None:
    sc.profile("eve", consent=ALL)
    browsing = [event("eve", "rage_click", T0 + timedelta(seconds=i), n=i) for i in range(3)]
    assert sc.feed(*browsing).decisions == []
    sc.profile("fay", consent=ALL)
    shopping = [event("fay", "checkout_started", T0, n=0)] + [
        event("fay", "rage_click", T0 + timedelta(seconds=i), n=i) for i in range(1, 4)
    ]
    sc.feed(event("fay", "checkout_error", T0 - timedelta(minutes=5), n=9))
    (a,) = sc.feed(*shopping).actions
    assert (a.rule_id, a.channel.value) == ("checkout_assist", "in_app")
    assert a.reasons[0].detail == "triggered by rage burst"


def test_retention_offer_fires_when_friction_crosses_75(sc: Harness) -> None:
    sc.profile("gus", consent=Consent(email=True))
    out = []
    for h in (0, 1, 2):
        sc.clock.set(T0 + timedelta(hours=h))
        out.append(sc.feed(event("gus", "delivery_delayed", T0 + timedelta(hours=h), n=h)))
    crossed = out[2].decisions
    retention = [d for d in crossed if d.rule_id == "retention_offer"]
    assert len(retention) == 1
    assert retention[0].action.reasons[0].detail.startswith("friction rose from")
    assert retention[0].action.scores.friction >= 75


def test_support_contact_recently_holds_payment_recovery(sc: Harness) -> None:
    sc.profile("hal", consent=ALL)
    sc.feed(event("hal", "support_contact", T0, n=1))
    res = sc.feed(event("hal", "payment_failed", T0 + timedelta(minutes=20), n=2))
    assert [d.rule_id for d in res.decisions] == []


def test_replaying_a_batch_yields_the_same_action_ids_and_no_second_action(sc: Harness) -> None:
    sc.profile("ivy", consent=ALL)
    evs = [event("ivy", "payment_failed", T0, n=1, order_id="o")]
    first = sc.feed(*evs)
    again = sc.feed(*evs)  # redelivery after a crash: the event id is already applied
    assert len(first.actions) == 1
    assert again.actions == [] and again.stats.duplicates == 1
    fresh = scenario()
    fresh.profile("ivy", consent=ALL)
    assert fresh.feed(*evs).actions[0].action_id == first.actions[0].action_id


def test_unknown_types_count_as_other_and_update_recency(sc: Harness) -> None:
    res = sc.feed(event("jo", "loyalty_points_redeemed", T0, n=1))
    assert res.stats.events_by_type == {"other": 1}
    state = sc.state("jo")
    assert state is not None and state.last_seen == T0.timestamp()
    assert state.recent_events() == [("loyalty_points_redeemed", T0.timestamp())]


def test_a_profile_tombstone_removes_consent(sc: Harness) -> None:
    sc.profile("kit", consent=ALL)
    sc.records(profiles=[RawRecord("customer-profiles", 0, 1, b"kit", None)])
    res = sc.feed(event("kit", "delivery_delayed", T0, n=1))
    assert res.decisions[0].suppressed_by is SuppressionReason.consent


kinds = st.sampled_from(
    [
        "payment_failed",
        "delivery_delayed",
        "checkout_error",
        "error_page",
        "rage_click",
        "checkout_started",
        "page_view",
        "app_crash",
    ]
)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(kinds, st.integers(0, 600)), min_size=1, max_size=30), st.integers(1, 10))
def test_the_same_trigger_never_yields_two_actions_and_suppressions_have_reasons(
    steps: list[tuple[str, int]], batch: int
) -> None:
    sc = scenario()
    sc.profile("max", consent=ALL)
    evs = [event("max", k, T0 + timedelta(minutes=m), n=i) for i, (k, m) in enumerate(steps)]
    actions, decisions = [], []
    for i in range(0, len(evs), batch):
        res = sc.feed(*evs[i : i + batch] * 2)  # every event delivered twice
        actions += res.actions
        decisions += res.decisions
    assert len({a.action_id for a in actions}) == len(actions)
    assert len({a.trigger_event_id for a in actions}) == len(actions)  # one per trigger
    for d in decisions:
        assert (d.status is DecisionStatus.suppressed) == (d.suppressed_by is not None)
    assert len({d.decision_id for d in decisions}) == len(decisions)


@settings(max_examples=40, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from(["max", "ned"]), kinds, st.integers(0, 600)), max_size=40),
    st.lists(st.integers(1, 7), min_size=1, max_size=10),
)
def test_decisions_and_state_do_not_depend_on_where_batches_are_cut(
    steps: list[tuple[str, str, int]], cuts: list[int]
) -> None:
    """What a crashed-and-replayed worker relies on: any batching decides the same.

    Each customer's events arrive in time order with distinct times, as from one upstream
    source. (Late events and same-millisecond ties inside one batch are the known exception:
    requirement counts read the batch's state, docs/decisions.md §9.)
    """
    # minutes become distinct, increasing times: the i-th step is i seconds later still
    steps = sorted(steps, key=lambda s: s[2])
    evs = [
        event(c, k, T0 + timedelta(minutes=m, seconds=i), n=i) for i, (c, k, m) in enumerate(steps)
    ]
    whole, cut = scenario(), scenario()
    for sc in (whole, cut):
        sc.profile("max", consent=ALL)
        sc.profile("ned", consent=Consent(email=True))
    one = whole.feed(*evs)
    decisions, i = [], 0
    while i < len(evs):
        n = cuts[i % len(cuts)]
        decisions += cut.feed(*evs[i : i + n]).decisions
        i += n
    key = [(d.action.action_id, d.status, d.suppressed_by) for d in one.decisions]
    assert [(d.action.action_id, d.status, d.suppressed_by) for d in decisions] == key
    for cid in ("max", "ned"):
        a, b = whole.state(cid), cut.state(cid)
        assert a is not None and b is not None
        assert encode_state(a) == encode_state(b)


def test_records_replayed_at_their_old_offsets_are_skipped_whatever_their_number(
    sc: Harness,
) -> None:
    """More events than the id memory holds, replayed after a failure: none counts twice."""
    sc.profile("ola", consent=ALL)
    evs = [event("ola", "payment_failed" if i == 0 else "page_view", T0 + timedelta(seconds=i),
                 n=i) for i in range(40)]  # fmt: skip
    recs = [RawRecord("journey-events", 0, 100 + i, b"ola", encode(e)) for i, e in enumerate(evs)]
    first = sc.records(events=recs)
    state = sc.state("ola")
    assert state is not None and state.events_seen == 40 and state.last_offset == 139
    again = sc.records(events=recs)
    after = sc.state("ola")
    assert again.stats.replayed == 40 and again.decisions == []
    assert after is not None and after.events_seen == 40
    assert len(first.actions) == 1


class _BrokenStore(MemoryStore):
    """A state store with a bug that bites one customer."""

    def get(self, customer_id: str) -> CustomerState | None:
        if customer_id == "boom":
            raise KeyError("corrupt state for boom")
        return super().get(customer_id)


def test_a_record_that_makes_scoring_raise_is_dead_lettered_and_the_batch_goes_on() -> None:
    sc = scenario()
    sc.stores.stores[0] = _BrokenStore()
    for cid in ("ok1", "ok2"):
        sc.profile(cid, consent=ALL)
    res = sc.feed(*[event(c, "delivery_delayed", T0, n=1) for c in ("ok1", "boom", "ok2")])
    (dl,) = res.dead_letters
    assert (dl.error_type.value, dl.offset) == ("processing_error", 1)
    assert dl.error_detail == "KeyError: 'corrupt state for boom'"
    assert sorted(a.customer_id for a in res.actions) == ["ok1", "ok2"]
    assert res.stats.dead_letters_by_reason == {"processing_error": 1}


def test_only_short_text_and_finite_numbers_become_attributes(sc: Harness) -> None:
    # An action stays small and valid JSON whatever upstream puts in a whitelisted property.
    sc.profile("ann", consent=ALL)
    raw = (
        b'{"event_id":"p1","customer_id":"ann","type":"payment_failed","occurred_at":"'
        + T0.isoformat().encode()
        + b'","properties":{"order_id":"'
        + b"o" * 5000
        + b'","amount":1e400,'
        b'"payment_method":"card"}}'
    )
    res = sc.records(events=[sc.event_record(raw, "ann")])
    (a,) = res.actions
    assert a.attributes == {"payment_method": "card"}


def test_the_harness_commits_each_batch_as_the_worker_does(sc: Harness) -> None:
    sc.profile("ann", consent=ALL)
    sc.feed(event("ann", "page_view", T0, n=1))
    store = sc.stores.partition(0)
    store.discard()  # an abort after the batch was published must not undo it
    state = sc.state("ann")
    assert state is not None and state.events_seen == 1
    assert store.stream_time == T0.timestamp()
