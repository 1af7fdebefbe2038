"""Customer state on the wire: exact round trips, small records, refusal of garbage."""

from __future__ import annotations

import statistics
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from forewarn.models.contracts import Consent, CustomerProfile, JourneyEvent
from forewarn.models.friction import FrictionConfig
from forewarn.models.state import CustomerState, StoredProfile, apply_event
from forewarn.models.state_codec import StateDecodeError, decode_state, encode_state
from forewarn.offline.simulator import JourneySimulator
from forewarn.pipeline.codecs import RawRecord, encode
from forewarn.pipeline.engine import ScoringEngine
from tests.conftest import T0, event

CFG = FrictionConfig.default()
KINDS = ["page_view", "rage_click", "payment_failed", "checkout_started", "survey_response",
         "delivery_delayed", "support_contact", "error_page", "purchase"]  # fmt: skip


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(KINDS),
            st.integers(-3_600_000, 30 * 86_400_000),  # ms around T0: late events too
            st.sampled_from([None, "s1", "s2"]),
            st.sampled_from([None, "/a", "/b"]),
        ),
        max_size=40,
    ),
    st.booleans(),
)
def test_any_state_survives_the_round_trip_exactly(
    steps: list[tuple[str, int, str | None, str | None]], with_profile: bool
) -> None:
    s = CustomerState("c-ü")
    if with_profile:
        s.profile = StoredProfile.of(CustomerProfile(
            customer_id="c-ü",
            consent=Consent(email=True, phone=True),
            timezone="Europe/Berlin",
            tier="gold",
            signed_up_at=datetime(2025, 5, 1, 8, 30, 0, 123456, tzinfo=UTC),
        ))  # fmt: skip
    for i, (kind, ms, session, page) in enumerate(steps):
        e = JourneyEvent(
            event_id=f"e{i}",
            customer_id="c-ü",
            type=kind,
            occurred_at=T0 + timedelta(milliseconds=ms),
            session_id=session,
            properties={"page": page, "kind": "nps", "score": 3},
        )
        apply_event(s, e, CFG)
        if i % 7 == 3:
            s.remember_action(f"a{i}", "rule_x", "email", s.last_seen)
    s.last_friction = 41.7
    s.last_offset = 7_000_000_000 + len(steps)
    back = decode_state(encode_state(s))
    assert back == s
    assert encode_state(back) == encode_state(s)


def test_times_before_1970_survive_the_round_trip_exactly() -> None:
    # the contract takes them; rounding towards zero once gave them back a millisecond late
    s = CustomerState("c1")
    for i, ms in enumerate((-1234, -999, -3)):
        at = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ms)
        e = JourneyEvent(event_id=f"e{i}", customer_id="c1", type="payment_failed", occurred_at=at)
        apply_event(s, e, CFG)
    s.remember_action("a1", "rule_x", "email", s.last_seen, delivered_at=s.last_seen + 3600)
    back = decode_state(encode_state(s))
    assert back == s and back.last_seen == -0.003


def test_a_typical_customer_fits_in_a_kibibyte() -> None:
    """A week of simulated journeys: the median and 90th percentile stay under 1 KiB."""
    sim = JourneySimulator(
        customers=300, seed=11, start=datetime(2026, 2, 1, tzinfo=UTC), span=timedelta(days=7)
    )
    states = {
        p.customer_id: CustomerState(p.customer_id, profile=StoredProfile.of(p))
        for p in sim.profiles()
    }
    for e in sim.events():
        apply_event(states[e.customer_id], e, CFG)
    sizes = sorted(len(encode_state(s)) for s in states.values())
    assert statistics.median(sizes) <= 1024
    assert sizes[int(len(sizes) * 0.9)] <= 1024
    assert statistics.mean(s.events_seen for s in states.values()) > 30  # not a trivial week


@pytest.mark.parametrize(
    "data", [b"", b"\x93\x01\x02\x03", b"\xc1", b"not msgpack at all", b"\x92\x07\xa1x"]
)
def test_garbage_is_refused_with_one_error_type(data: bytes) -> None:
    with pytest.raises(StateDecodeError):
        decode_state(data)


def test_idle_customers_expire_in_stream_time_and_keep_their_profile() -> None:
    engine = ScoringEngine(idle_ttl_seconds=2 * 86400)
    offsets = iter(range(100))

    def feed(*evs: JourneyEvent) -> list[tuple[str, bool]]:
        recs = [RawRecord("journey-events", 0, next(offsets), None, encode(e)) for e in evs]
        res = engine.process(recs)
        return [(c.customer_id, c.state is not None and c.state.active) for c in res.changes]

    prof = CustomerProfile(customer_id="kept", consent=Consent(email=True))
    engine.process(profiles=[RawRecord("customer-profiles", 0, 0, b"kept", encode(prof))])
    feed(event("kept", "page_view", T0, n=1), event("gone", "page_view", T0, n=1))
    feed(event("busy", "page_view", T0 + timedelta(days=1), n=1))
    assert len(engine.stores.partition(0)) == 3  # one day idle: nothing expires
    changes = feed(event("busy", "page_view", T0 + timedelta(days=3), n=2))
    assert ("kept", False) in changes and ("gone", False) in changes
    store = engine.stores.partition(0)
    assert store.get("gone") is None
    kept = store.get("kept")
    assert kept is not None and not kept.active and kept.profile is not None
    assert kept.profile.contract("kept") == prof
    assert store.get("busy") is not None


def test_customers_share_what_their_profiles_have_in_common() -> None:
    """A state keeps its profile lean (issue 14: a pydantic profile was 2.4 KB of each
    customer's 4 KB): one consent object per combination, one copy of each time zone, tier
    and page, however many customers hold them; and the bytes on the wire are the same."""
    engine = ScoringEngine()
    zone = "America/Argentina/Buenos_Aires"
    profiles = [
        CustomerProfile(customer_id=f"c{i}", consent=Consent(email=True, push=True),
                        timezone="".join(zone), tier="".join(["gold"]))
        for i in range(3)
    ]  # fmt: skip
    recs = [RawRecord("customer-profiles", 0, i, p.customer_id.encode(), encode(p))
            for i, p in enumerate(profiles)]  # fmt: skip
    engine.process(profiles=recs)
    views = [
        event(p.customer_id, "page_view", T0, n=1, page="".join(["/checkout/", "payment"]))
        for p in profiles
    ]
    engine.process([RawRecord("journey-events", 0, i, None, encode(e))
                    for i, e in enumerate(views)])  # fmt: skip
    kept = [engine.stores.partition(0).get(p.customer_id) for p in profiles]
    stored = [s.profile for s in kept if s is not None and s.profile is not None]
    assert len(stored) == 3
    assert stored[0].consent is stored[1].consent is stored[2].consent
    assert stored[0].timezone is stored[1].timezone is stored[2].timezone
    assert stored[0].tier is stored[2].tier
    pages = [s.session.pages[-1] for s in kept if s is not None]
    assert pages[0] is pages[1] is pages[2]
    for s, p in zip(kept, profiles, strict=True):
        assert s is not None and s.profile is not None
        assert s.profile.contract(p.customer_id) == p
        again = decode_state(encode_state(s))
        assert again == s and again.profile is not None
        assert again.profile.consent is s.profile.consent
