"""Per-customer state, updated one event at a time in event time.

The same ``apply_event`` serves the stream, replays and (later) training, so features can
never drift between them. State is owned by the partition that owns the customer.

>>> from datetime import UTC, datetime
>>> from forewarn.models.contracts import JourneyEvent
>>> from forewarn.models.friction import FrictionConfig
>>> cfg = FrictionConfig.default()
>>> s = CustomerState("c1")
>>> at = datetime(2026, 1, 1, tzinfo=UTC)
>>> e = JourneyEvent(event_id="e1", customer_id="c1", type="payment_failed", occurred_at=at)
>>> apply_event(s, e, cfg).duplicate, s.window_count(("payment_failed",), 3600, at.timestamp())
(False, 1)
>>> apply_event(s, e, cfg).duplicate
True
"""

from __future__ import annotations

import bisect
import hashlib
import math
import sys
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from typing import Any

import numpy as np
from numpy.typing import NDArray

from forewarn.models.contracts import ActionChannel, Consent, CustomerProfile
from forewarn.models.event_fields import EventFields
from forewarn.models.friction import FrictionConfig
from forewarn.models.session import DERIVED_TRIGGERS, SessionState, track_session

#: timestamps kept per event type for rolling-window counts: counts saturate here
WINDOW_DEPTH = 10
#: the longest window a rolling count can be asked for
WINDOW_HORIZON_SECONDS = 7 * 24 * 3600.0
#: event ids remembered per customer for duplicate detection (upstream retries and replays
#: arrive close together; 16 is many times what a retrying producer resends)
DEDUP_DEPTH = 16
#: emitted action ids remembered per customer (the duplicate-trigger policy)
ACTION_MEMORY = 8
#: marketing contacts remembered for the contact budget (its longest window's cap is less)
CONTACT_MEMORY = 32
#: bytes of the hash an id is remembered by: a false "duplicate" needs a 48-bit collision
#: among one customer's last 16 ids (about 1 in 10^13 per event)
ID_HASH_BYTES = 6

POOR_SURVEY = "poor_survey"
#: kinds recorded in the rolling counts that are detections, not events
DERIVED_KINDS = frozenset((*DERIVED_TRIGGERS, POOR_SURVEY))


def id_hash(value: str) -> int:
    """The short hash an event or action id is remembered by (state stays small)."""
    digest = hashlib.blake2b(value.encode(), digest_size=ID_HASH_BYTES).digest()
    return int.from_bytes(digest, "big")


def stable_fraction(key: str) -> float:
    """A number in [0, 1) fixed by ``key``: the same in every process and every replay (a
    sticky sample, a tie settled the same way twice).

    >>> stable_fraction("e1") == stable_fraction("e1") and 0 <= stable_fraction("e1") < 1
    True
    """
    digest = hashlib.blake2b(key.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def event_seconds(event: EventFields) -> float:
    """Event time in epoch seconds, to the millisecond (what state keeps, exactly)."""
    return round(event.occurred_at.timestamp(), 3)


def survey_is_poor(properties: dict[str, Any]) -> bool:
    """NPS 0-6 (detractor), CSAT 1-2 of 5, CES 5-7 of 7 (high effort) count as poor."""
    kind, score = properties.get("kind"), properties.get("score")
    if not isinstance(score, int | float):
        return False
    return (
        (kind == "nps" and score <= 6)
        or (kind == "csat" and score <= 2)
        or (kind == "ces" and score >= 5)
    )


#: consent as bits: bit i set when the channel CONSENT_CHANNELS[i] is allowed
CONSENT_CHANNELS = tuple(Consent.model_fields)


# Spelled out below (a loop over the names cost 1.5 µs, at every changelog write); a new
# channel must be added there too, which this check says at import.
assert CONSENT_CHANNELS == ("email", "sms", "push", "in_app", "phone"), CONSENT_CHANNELS


def consent_bits(c: Consent) -> int:
    """The consent as bits (the state codec's form of it).

    >>> consent_bits(Consent(sms=True, phone=True))
    18
    """
    return c.email | c.sms << 1 | c.push << 2 | c.in_app << 3 | c.phone << 4


@lru_cache(maxsize=64)
def shared_consent(bits: int) -> Consent:
    """One frozen ``Consent`` per combination, shared by every customer who gives it."""
    return Consent(**{name: bool(bits >> i & 1) for i, name in enumerate(CONSENT_CHANNELS)})


def shared_text(text: str | None) -> str | None:
    """One copy of a profile's repeated text (a time zone, a tier) for every customer."""
    return None if text is None else sys.intern(text)


@dataclass(frozen=True, slots=True)
class StoredProfile:
    """A customer's profile as their state keeps it: the ``CustomerProfile`` contract's
    fields without its customer id (the state has it), its consent shared with every customer
    who gives the same one, its time zone, locale and tier as shared strings.

    A validated pydantic profile takes about 2.4 KB of memory; this takes about 150 bytes,
    for every tracked customer (issue 14: 4.0 KB per customer fell to 2.0 KB).

    >>> p = CustomerProfile(customer_id="c1", consent=Consent(email=True), tier="gold")
    >>> kept = StoredProfile.of(p)
    >>> kept.consent is StoredProfile.of(p).consent, kept.contract("c1") == p
    (True, True)
    """

    consent: Consent
    do_not_contact: bool = False
    timezone: str = "UTC"
    preferred_channel: ActionChannel | None = None
    locale: str | None = None
    tier: str | None = None
    signed_up_at: datetime | None = None

    @staticmethod
    def of(p: CustomerProfile) -> StoredProfile:
        return StoredProfile(
            consent=shared_consent(consent_bits(p.consent)),
            do_not_contact=p.do_not_contact,
            timezone=sys.intern(p.timezone),
            preferred_channel=p.preferred_channel,
            locale=shared_text(p.locale),
            tier=shared_text(p.tier),
            signed_up_at=p.signed_up_at,
        )

    def contract(self, customer_id: str) -> CustomerProfile:
        """The profile as the ``CustomerProfile`` contract (for tests and tools)."""
        return CustomerProfile(
            customer_id=customer_id, consent=self.consent, do_not_contact=self.do_not_contact,
            timezone=self.timezone, preferred_channel=self.preferred_channel,
            locale=self.locale, tier=self.tier, signed_up_at=self.signed_up_at,
        )  # fmt: skip


@dataclass(slots=True)
class CustomerState:
    customer_id: str
    profile: StoredProfile | None = None
    first_seen: float = math.inf
    last_seen: float = -math.inf
    events_seen: int = 0
    #: signal index -> [decayed value, event time of that value]
    signals: dict[int, list[float]] = field(default_factory=dict)
    #: event type -> recent occurrence times (ascending, at most WINDOW_DEPTH)
    occurrences: dict[str, list[float]] = field(default_factory=dict)
    #: hashes (``id_hash``) of the last DEDUP_DEPTH event ids
    seen_events: list[int] = field(default_factory=list)
    session: SessionState = field(default_factory=SessionState)
    last_support_contact: float | None = None
    last_friction: float = 0.0
    #: churn risk after the last event (0 until a churn model scored the customer)
    last_churn_risk: float = 0.0
    #: contact risk after the last event (0 until a contact-risk model scored the customer)
    last_contact_risk: float = 0.0
    last_contact_by_rule: dict[str, float] = field(default_factory=dict)
    last_contact_by_channel: dict[str, float] = field(default_factory=dict)
    #: hashes of the last ACTION_MEMORY emitted action ids
    recent_actions: list[int] = field(default_factory=list)
    #: event times of the last non-transactional actions (the contact budget), ascending
    contact_times: list[float] = field(default_factory=list)
    #: offset (in the customer's journey-events partition) of the last record applied: a
    #: record at or below it was already applied (a replay) and is skipped
    last_offset: int = -1

    def copy(self) -> CustomerState:
        """An independent copy: a batch works on copies, so a batch that fails leaves the
        stored state as it was (``tests/unit/test_batch_failures.py`` checks every field).

        Positional, in field order: keywords cost 2 µs more a copy, and a worker copies each
        customer a batch touches."""
        return CustomerState(
            self.customer_id, self.profile, self.first_seen, self.last_seen, self.events_seen,
            {i: v[:] for i, v in self.signals.items()},
            {k: v[:] for k, v in self.occurrences.items()},
            self.seen_events[:], self.session.copy(), self.last_support_contact,
            self.last_friction, self.last_churn_risk, self.last_contact_risk,
            dict(self.last_contact_by_rule), dict(self.last_contact_by_channel),
            self.recent_actions[:], self.contact_times[:], self.last_offset,
        )  # fmt: skip

    @property
    def active(self) -> bool:
        """Whether any event was ever applied (a profile-only state is not active)."""
        return self.events_seen > 0

    def sent(self, action_id: str) -> bool:
        """Whether this action was already emitted to the customer."""
        return id_hash(action_id) in self.recent_actions

    def recent_events(self, n: int = 10) -> list[tuple[str, float]]:
        """The last ``n`` events (type, time), oldest first, from the rolling counts."""
        merged = [
            (at, kind)
            for kind, times in self.occurrences.items()
            if kind not in DERIVED_KINDS
            for at in times
        ]
        merged.sort()
        return [(kind, at) for at, kind in merged[-n:]]

    def window_count(self, types: tuple[str, ...], within: float, at: float) -> int:
        """Occurrences of ``types`` in the event-time window (at - within, at]."""
        lo = at - within
        n = 0
        occurrences = self.occurrences
        for t in types:
            times = occurrences.get(t)
            if times:  # ascending: two bisections instead of a scan (23 counts per event)
                n += bisect.bisect_right(times, at) - bisect.bisect_right(times, lo)
        return n

    def signal_row(
        self, config: FrictionConfig, at: float, out: NDArray[np.float64] | list[float]
    ) -> None:
        """Write every signal's value decayed to ``at`` into ``out`` (a numpy row, or a list:
        the engine makes one matrix of a batch's lists)."""
        rates = config.decay_rate_list
        for i, (value, when) in self.signals.items():
            out[i] = value * math.exp(-rates[i] * max(0.0, at - when))

    def remember_action(
        self,
        action_id: str,
        rule_id: str,
        channel: str,
        at: float,
        *,
        delivered_at: float | None = None,
        counts: bool = True,
    ) -> None:
        """An action was emitted at ``at`` (its trigger's time); ``counts``: it is charged to
        the contact budget at ``delivered_at`` (a deferred action's ``not_before``, else
        ``at``), when it reaches the customer. Cooldowns run from the trigger."""
        self.recent_actions.append(id_hash(action_id))
        del self.recent_actions[:-ACTION_MEMORY]
        if counts:
            bisect.insort(self.contact_times, at if delivered_at is None else delivered_at)
            del self.contact_times[:-CONTACT_MEMORY]
        self.last_contact_by_rule[rule_id] = max(self.last_contact_by_rule.get(rule_id, at), at)
        prev = self.last_contact_by_channel.get(channel, at)
        self.last_contact_by_channel[channel] = max(prev, at)


@dataclass(slots=True)  # read-only by convention: frozen cost 0.4 µs more an event
class Applied:
    """What one event did to the state."""

    duplicate: bool
    #: the event's time in epoch seconds
    at: float = 0.0
    derived: tuple[str, ...] = ()


_NOT_APPLIED = Applied(duplicate=True)


def _page_of(properties: dict[str, Any]) -> str | None:
    if not properties:
        return None
    for k in ("page", "path", "url"):
        v = properties.get(k)
        if isinstance(v, str) and v:
            return sys.intern(v)  # session histories keep it: one copy for all customers
    return None


def apply_event(state: CustomerState, event: EventFields, config: FrictionConfig) -> Applied:
    """Fold one event into the customer's state (idempotent per ``event_id``)."""
    seen = id_hash(event.event_id)
    seen_events = state.seen_events
    if seen in seen_events:
        return _NOT_APPLIED
    seen_events.append(seen)
    if len(seen_events) > DEDUP_DEPTH:
        del seen_events[:-DEDUP_DEPTH]

    at = event_seconds(event)
    state.events_seen += 1
    state.first_seen = min(state.first_seen, at)
    state.last_seen = max(state.last_seen, at)

    derived = track_session(
        state.session, event.type, at, event.session_id, _page_of(event.properties)
    )
    kinds: tuple[str, ...] = (event.type, *derived)
    if event.type == "survey_response" and survey_is_poor(event.properties):
        kinds += (POOR_SURVEY,)
    if event.type == "support_contact":
        state.last_support_contact = at

    resolves, feeds = config.resolves, config.feeds
    for kind in kinds:
        _record_occurrence(state, kind, at)
        for i in resolves.get(kind, ()):
            state.signals.pop(i, None)
        for i, amount in feeds.get(kind, ()):
            _feed(state, config, i, amount, at)
    return Applied(duplicate=False, at=at, derived=derived)


def _record_occurrence(state: CustomerState, kind: str, at: float) -> None:
    times = state.occurrences.get(kind)
    if times is None:
        state.occurrences[kind] = [at]
        return
    if not times or at >= times[-1]:
        times.append(at)
    else:  # late event: keep the list in event-time order
        times.insert(next(i for i, t in enumerate(times) if t > at), at)
    horizon = times[-1] - WINDOW_HORIZON_SECONDS
    if times[0] > horizon and len(times) <= WINDOW_DEPTH:
        return  # nothing to drop (most events)
    drop = 0
    while drop < len(times) and times[drop] <= horizon:
        drop += 1
    del times[: max(drop, len(times) - WINDOW_DEPTH)]


def _feed(state: CustomerState, config: FrictionConfig, i: int, amount: float, at: float) -> None:
    cur = state.signals.get(i)
    if cur is None:
        state.signals[i] = [amount, at]
        return
    value, when = cur
    rate = config.decay_rate_list[i]
    if at >= when:
        cur[0] = value * math.exp(-rate * (at - when)) + amount
        cur[1] = at
    else:  # late event: decay its contribution forward to the accumulator's time
        cur[0] = value + amount * math.exp(-rate * (when - at))
