"""Contact policies: expiry, budget, quiet hours, holdouts, shadow mode, and their order."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from forewarn.models.contracts import (
    ALL_CONSENT,
    CustomerProfile,
    SuppressionReason,
)
from forewarn.models.friction import FrictionConfig
from forewarn.models.state import CustomerState, StoredProfile
from forewarn.pipeline.clocks import ManualClock
from forewarn.pipeline.harness import Harness
from forewarn.pipeline.results import BatchResult
from forewarn.rules import decide
from forewarn.rules.decide import DecisionMaker
from forewarn.rules.moment import Moment
from forewarn.rules.policies import POLICIES, Proposal, apply_policies, in_holdout
from forewarn.rules.rulebook import Rule, load_rulebook_text
from tests.conftest import ROOT, event

T0 = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)  # 13:00 in Berlin

BOOK = """
version: "t"
budget: [{within: 6h, at_most: 1}, {within: 7d, at_most: 3}]
rules:
  - id: on_delay
    triggers: {events: [delivery_delayed]}
    action: {playbook: delay, channels: [email], template: t, priority: 50, ttl: 12h}
    policies: {cooldown: 0s}
  - id: on_search
    triggers: {events: [search_no_results]}
    action: {playbook: search, channels: [email], template: t, priority: 40, ttl: 12h}
    policies: {cooldown: 0s}
  - id: receipt
    triggers: {events: [payment_failed]}
    action: {playbook: pay, channels: [email], template: t, priority: 90, ttl: 2h,
             transactional: true}
    policies: {cooldown: 0s}
"""


class Engine(Harness):
    """A scenario on the rulebook above; ``policies`` are added to its first rule only."""

    def __init__(self, book: str = BOOK, **policies: str) -> None:
        extra = "".join(f", {k}: {v}" for k, v in policies.items())
        text = book.replace("policies: {cooldown: 0s}", f"policies: {{cooldown: 0s{extra}}}", 1)
        super().__init__(
            rulebook=load_rulebook_text(text), clock=ManualClock(T0 + timedelta(days=30))
        )
        self.book = self.engine.rulebook

    def profile(self, cid: str, tz: str = "Europe/Berlin", **kw: object) -> BatchResult:  # type: ignore[override]
        return super().profile(cid, consent=ALL_CONSENT, timezone=tz, **kw)


def reasons(res: BatchResult) -> list[tuple[str, str]]:
    return [(d.rule_id, d.suppressed_by.value if d.suppressed_by else d.status.value)
            for d in res.decisions]  # fmt: skip


def test_the_contact_budget_caps_marketing_and_spares_transactional_messages() -> None:
    e = Engine()
    e.profile("ann")
    res = e.feed(
        event("ann", "delivery_delayed", T0, n=1),
        event("ann", "search_no_results", T0 + timedelta(hours=1), n=2),
        event("ann", "payment_failed", T0 + timedelta(hours=2), n=3),
        event("ann", "search_no_results", T0 + timedelta(hours=7), n=4),
    )
    assert reasons(res) == [("on_delay", "emitted"), ("on_search", "frequency_cap"),
                            ("receipt", "emitted"), ("on_search", "emitted")]  # fmt: skip
    capped = [d for d in res.decisions if d.suppressed_by is SuppressionReason.frequency_cap]
    assert capped[0].detail == "contact budget spent: 1 of 1 in 6 h"
    later = e.feed(event("ann", "delivery_delayed", T0 + timedelta(hours=14), n=5),
                   event("ann", "delivery_delayed", T0 + timedelta(hours=21), n=6))  # fmt: skip
    assert reasons(later) == [("on_delay", "emitted"), ("on_delay", "frequency_cap")]  # 3 in 7 d


def test_quiet_hours_defer_to_the_local_morning_or_drop() -> None:
    night = datetime(2026, 3, 2, 21, 30, tzinfo=UTC)  # 22:30 in Berlin, 16:30 in New York
    e = Engine(quiet_hours='{start: "21:00", end: "08:00", mode: defer}')
    e.profile("ber")
    e.profile("nyc", tz="America/New_York")
    res = e.feed(
        event("ber", "delivery_delayed", night, n=1), event("nyc", "delivery_delayed", night, n=1)
    )
    by = {a.customer_id: a for a in res.actions}
    assert by["ber"].not_before == datetime(2026, 3, 3, 7, 0, tzinfo=UTC)  # 08:00 Berlin
    assert by["nyc"].not_before is None
    d = Engine(quiet_hours='{start: "21:00", end: "08:00", mode: drop}')
    d.profile("ber")
    assert reasons(d.feed(event("ber", "delivery_delayed", night, n=1))) == [
        ("on_delay", "quiet_hours")
    ]
    # deferring past the action's time-to-live (12 h) is no use: suppressed too
    long = Engine(quiet_hours='{start: "19:00", end: "12:00", mode: defer}')
    long.profile("ber")
    (dec,) = long.feed(event("ber", "delivery_delayed", night, n=1)).decisions
    assert dec.suppressed_by is SuppressionReason.quiet_hours and "outlast" in (dec.detail or "")


def test_a_trigger_too_far_behind_the_stream_has_expired() -> None:
    e = Engine()
    e.profile("cy")
    e.feed(event("cy", "page_view", T0 + timedelta(days=1), n=1))
    late = e.feed(event("cy", "delivery_delayed", T0, n=2))  # 24 h behind; lives 12 h
    assert reasons(late) == [("on_delay", "expired")]
    fresh = e.feed(event("cy", "delivery_delayed", T0 + timedelta(hours=20), n=3))
    assert reasons(fresh) == [("on_delay", "emitted")]


def test_shadow_rules_record_decisions_but_send_and_charge_nothing() -> None:
    e = Engine(shadow="true")
    e.profile("dee")
    res = e.feed(event("dee", "delivery_delayed", T0, n=1),
                 event("dee", "search_no_results", T0 + timedelta(minutes=5), n=2))  # fmt: skip
    assert reasons(res) == [("on_delay", "shadow"), ("on_search", "emitted")]
    assert [a.rule_id for a in res.actions] == ["on_search"], "the shadow did not use the budget"


def test_holdouts_are_sticky_per_rule_and_global() -> None:
    e = Engine(holdout_percent="100")
    e.profile("eve")
    assert reasons(e.feed(event("eve", "delivery_delayed", T0, n=1))) == [("on_delay", "holdout")]
    assert in_holdout("eve", "r", 37.5) == in_holdout("eve", "r", 37.5)
    share = sum(in_holdout(f"c{i}", "global", 10.0) for i in range(20_000)) / 20_000
    assert 0.09 < share < 0.11
    g = Engine(BOOK.replace('version: "t"', 'version: "t"\nholdout_percent: 100'))
    g.profile("fay")
    assert reasons(g.feed(event("fay", "payment_failed", T0, n=1))) == [("receipt", "holdout")]


def test_policies_apply_in_the_documented_order() -> None:
    # expired before duplicate: a replayed late trigger says expired
    e = Engine(holdout_percent="100", quiet_hours='{start: "00:00", end: "23:59", mode: drop}')
    e.profile("gus")
    e.feed(event("gus", "page_view", T0 + timedelta(days=1), n=1))
    assert reasons(e.feed(event("gus", "delivery_delayed", T0, n=2))) == [("on_delay", "expired")]
    # holdout before the budget and quiet hours: another rule spent the budget, and the
    # held-out rule's decision is still an assignment to the holdout arm
    e.feed(event("gus", "search_no_results", T0 + timedelta(days=1, minutes=1), n=3))
    held = e.feed(event("gus", "delivery_delayed", T0 + timedelta(days=1, minutes=2), n=4))
    assert reasons(held) == [("on_delay", "holdout")]
    assert [d.arm for d in held.decisions] == ["holdout"]
    # frequency_cap before quiet_hours, and a capped decision stays in the treated arm
    f = Engine(quiet_hours='{start: "00:00", end: "23:59", mode: drop}')
    f.profile("hal")
    f.feed(event("hal", "search_no_results", T0 + timedelta(days=1, minutes=1), n=3))
    capped = f.feed(event("hal", "delivery_delayed", T0 + timedelta(days=1, minutes=2), n=4))
    assert reasons(capped) == [("on_delay", "frequency_cap")]
    assert [d.arm for d in capped.decisions] == ["treated"]
    quiet = f.feed(event("hal", "delivery_delayed", T0 + timedelta(days=1, hours=7), n=5))
    assert reasons(quiet) == [("on_delay", "quiet_hours")]


kinds = st.sampled_from(["delivery_delayed", "search_no_results", "payment_failed", "page_view"])


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["a", "b"]), kinds, st.integers(0, 3 * 24 * 60)),
                max_size=30), st.booleans())  # fmt: skip
def test_no_customer_ever_exceeds_the_budget_in_any_window_whatever_the_order(
    steps: list[tuple[str, str, int]], deferring: bool
) -> None:
    # With quiet hours that defer, an action reaches the customer in the morning: the
    # budget holds for when actions arrive, not for when they were triggered.
    e = Engine(quiet_hours='{start: "21:00", end: "08:00", mode: defer}') if deferring else Engine()
    e.profile("a")
    e.profile("b", tz="Asia/Tokyo")
    evs = [event(c, k, T0 + timedelta(minutes=m), n=i) for i, (c, k, m) in enumerate(steps)]
    actions = []
    for i in range(0, len(evs), 3):  # out of order in time, in small batches
        actions += e.feed(*evs[i : i + 3]).actions
    for cid in ("a", "b"):
        times = sorted(
            a.not_before or a.triggered_at
            for a in actions
            if a.customer_id == cid and not a.transactional
        )
        for w in e.book.budget:
            for t in times:
                inside = [x for x in times if t <= x < t + timedelta(seconds=w.within)]
                assert len(inside) <= w.at_most


def test_a_deferred_action_counts_against_the_budget_when_it_arrives() -> None:
    # Issue 9: a replay gave one customer four marketing contacts within 7 days of delivery.
    e = Engine(quiet_hours='{start: "21:00", end: "08:00", mode: defer}')
    e.profile("eve")  # Berlin
    night = datetime(2026, 3, 2, 22, 0, tzinfo=UTC)  # 23:00 in Berlin: deferred to 08:00
    first = e.feed(event("eve", "delivery_delayed", night, n=1))
    (a,) = first.actions
    assert a.not_before == datetime(2026, 3, 3, 7, 0, tzinfo=UTC)
    # 07:30 Berlin the next morning: 8.5 h after the trigger, but 30 min before the deferred
    # action arrives, so a second contact now would mean two within the 6-hour window.
    morning = e.feed(event("eve", "search_no_results", datetime(2026, 3, 3, 6, 30, tzinfo=UTC),
                           n=2))  # fmt: skip
    assert reasons(morning) == [("on_search", "frequency_cap")]


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 40), st.integers(0, 600)), min_size=1, max_size=25))
def test_a_holdout_customer_never_receives_that_rules_action(steps: list[tuple[int, int]]) -> None:
    e = Engine(holdout_percent="50")
    for c in {c for c, _ in steps}:
        e.profile(f"c{c}")
    res = e.feed(*[event(f"c{c}", "delivery_delayed", T0 + timedelta(minutes=m), n=i)
                   for i, (c, m) in enumerate(steps)])  # fmt: skip
    for a in res.actions:
        assert not in_holdout(a.customer_id, "on_delay", 50.0)
    held = [d for d in res.decisions if d.suppressed_by is SuppressionReason.holdout]
    assert all(in_holdout(d.customer_id, "on_delay", 50.0) for d in held)


def test_policies_say_no_in_the_order_of_the_policies_tuple() -> None:
    """A proposal every policy refuses; unblock them one by one, in POLICIES order: each
    time the next policy in the tuple is the one that says no."""
    book = load_rulebook_text(
        BOOK.replace(
            "policies: {cooldown: 0s}",
            'policies: {cooldown: 1d, holdout_percent: 100, quiet_hours: {start: "00:00", '
            'end: "23:59", mode: drop}}',
            1,
        ),
        "all-refusing.yaml",
    )
    rule = book.rules[0]
    at = T0.timestamp()
    state = CustomerState(
        "gus",
        profile=StoredProfile.of(CustomerProfile(customer_id="gus", do_not_contact=True)),
        contact_times=[at - 60],
    )
    e = event("gus", "delivery_delayed", T0, n=1)
    m = Moment(e, at, state, (), False, 10.0, 0.0, [0.0], stream_time=at + 86400)
    action = DecisionMaker(book, FrictionConfig.default(), T0, "v")._action(
        rule, m, rule.action.channels[0]
    )
    state.remember_action(action.action_id, rule.id, "email", at - 3600)  # duplicate, cooldown
    unblock: dict[str, Callable[[Proposal], Proposal]] = {
        "do_not_contact": lambda p: _with_profile(p, do_not_contact=False),
        "consent": lambda p: replace(
            _with_profile(p, consent=ALL_CONSENT), channel=rule.action.channels[0]
        ),
        "expired": lambda p: replace(p, moment=replace(p.moment, stream_time=at)),
        "holdout": lambda p: replace(p, rule=_with_policies(p.rule, holdout_percent=0.0)),
        "duplicate": lambda p: _with_state(p, recent_actions=[]),
        "cooldown": lambda p: _with_state(p, last_contact_by_rule={}),
        "frequency_cap": lambda p: _with_state(p, contact_times=[]),
        "quiet_hours": lambda p: replace(p, rule=_with_policies(p.rule, quiet_hours=None)),
    }
    assert list(unblock) == [policy.__name__ for policy in POLICIES]
    p = Proposal(rule, m, action, None, book)
    for policy in POLICIES:
        _, no = apply_policies(p)
        assert no is not None and no.reason.value == policy.__name__
        p = unblock[policy.__name__](p)
    assert apply_policies(p)[1] is None, "every policy unblocked: the action goes out"


def _with_state(p: Proposal, **fields: object) -> Proposal:
    state = p.moment.state.copy()
    for k, v in fields.items():
        setattr(state, k, v)
    return replace(p, moment=replace(p.moment, state=state))


def _with_profile(p: Proposal, **fields: Any) -> Proposal:
    profile = p.moment.state.profile
    assert profile is not None
    return _with_state(p, profile=replace(profile, **fields))


def _with_policies(rule: Rule, **fields: object) -> Rule:
    return rule.model_copy(update={"policies": rule.policies.model_copy(update=fields)})


def test_the_documented_order_is_the_order_policies_apply_in() -> None:
    names = [policy.__name__ for policy in POLICIES]
    assert re.findall(r"^\d+\. ``(\w+)``", decide.__doc__ or "", re.M) == [*names, "arbitration"]
    readme = (ROOT / "README.md").read_text()
    said = readme[readme.index("Then come the **policies**") :][:600]
    words = {
        "do_not_contact": "do-not-contact",
        "consent": "consent",
        "expired": "trigger too old",
        "duplicate": "duplicate action",
        "cooldown": "per-rule cooldown",
        "frequency_cap": "contact budget",
        "quiet_hours": "quiet hours",
        "holdout": "holdouts",
    }
    places = [said.index(words[n]) for n in names]
    assert places == sorted(places), "the README lists the policies in POLICIES order"
