"""Customer state as compact bytes: the changelog record and the local store's value.

MessagePack (binary, fast, readable from any language) of a positional array, version 1:

``[1, customer_id, profile, base, first, events_seen, signals, occurrences, seen_events,
session, last_support_contact, last_friction, last_contact_by_rule, last_contact_by_channel,
recent_actions, last_offset, last_churn_risk, contact_times, last_contact_risk]``
(the last one added later: a state written without it reads as 0)

Times are event times kept to the millisecond (``state.event_seconds``), so they travel as
integer milliseconds *before* ``base`` (the customer's last event): small integers that
MessagePack packs in 1-5 bytes, and exact. Id hashes travel as one byte string. A typical
customer encodes to a few hundred bytes; ``decode_state(encode_state(s))`` equals ``s``.

>>> from datetime import UTC, datetime
>>> from forewarn.models.contracts import JourneyEvent
>>> from forewarn.models.friction import FrictionConfig
>>> from forewarn.models.state import CustomerState, apply_event
>>> s = CustomerState("c1")
>>> e = JourneyEvent(event_id="e1", customer_id="c1", type="payment_failed",
...                  occurred_at=datetime(2026, 1, 1, tzinfo=UTC))
>>> _ = apply_event(s, e, FrictionConfig.default())
>>> data = encode_state(s)
>>> decode_state(data) == s, len(data) < 128
(True, True)
"""

from __future__ import annotations

import math
import sys
from datetime import datetime
from math import floor
from typing import Any

import msgpack

from forewarn.errors import ForewarnError
from forewarn.models.contracts import ActionChannel
from forewarn.models.session import SessionState
from forewarn.models.state import (
    ID_HASH_BYTES,
    CustomerState,
    StoredProfile,
    consent_bits,
    shared_consent,
    shared_text,
)

VERSION = 1
_CHANNELS = {c.value: c for c in ActionChannel}


class StateDecodeError(ForewarnError, ValueError):
    """Bytes that are not a customer state this version can read."""


def _ms(t: float) -> int:
    # Times are whole milliseconds already, so t * 1000 is within 1e-3 of an integer and
    # adding one half before flooring rounds it exactly, before 1970 too (int() truncated
    # towards zero there, and a time before 1970 came back a millisecond late)
    return floor(t * 1000 + 0.5)


def _before(base: int, times: list[float]) -> list[int]:
    # base - _ms(t) in one float operation: t * 1000 is within 1e-3 of a whole number, so
    # adding one half and flooring gives the exact difference, of either sign
    b = base + 0.5
    return [floor(b - t * 1000) for t in times]


def _hashes(values: list[int]) -> bytes:
    return b"".join(v.to_bytes(ID_HASH_BYTES, "big") for v in values)


def _unhash(data: bytes) -> list[int]:
    n = ID_HASH_BYTES
    return [int.from_bytes(data[i : i + n], "big") for i in range(0, len(data), n)]


def _profile(p: StoredProfile | None) -> list[Any] | None:
    if p is None:
        return None
    return [
        consent_bits(p.consent),
        p.do_not_contact,
        p.timezone,
        None if p.preferred_channel is None else p.preferred_channel.value,
        p.locale,
        p.tier,
        None if p.signed_up_at is None else p.signed_up_at.isoformat(),
    ]


def _unprofile(w: list[Any] | None) -> StoredProfile | None:
    if w is None:
        return None
    bits, dnc, tz, pref, locale, tier, signed_up = w
    # Written by encode_state from a validated profile: built without re-validating.
    return StoredProfile(
        consent=shared_consent(bits),
        do_not_contact=dnc,
        timezone=sys.intern(tz),
        preferred_channel=None if pref is None else _CHANNELS[pref],
        locale=shared_text(locale),
        tier=shared_text(tier),
        signed_up_at=None if signed_up is None else datetime.fromisoformat(signed_up),
    )


def _session(ss: SessionState, base: int) -> list[Any] | None:
    if not (ss.key or ss.last_at):
        return None
    flags = ss.rage_burst_seen | ss.page_loop_seen << 1 | ss.in_checkout << 2
    return [ss.key, base - _ms(ss.started_at), base - _ms(ss.last_at), ss.pages, ss.rage_clicks,
            flags]  # fmt: skip


def encode_state(s: CustomerState) -> bytes:
    """The state as bytes (deterministic: equal states give equal bytes)."""
    base = _ms(s.last_seen) if s.active else 0
    b, occ = base + 0.5, s.occurrences
    wire = [
        VERSION,
        s.customer_id,
        _profile(s.profile),
        base,
        base - _ms(s.first_seen) if s.active else 0,
        s.events_seen,
        [[i, v, base - _ms(t)] for i, (v, t) in sorted(s.signals.items())],
        # _before, inline: a call per event type cost about 1 µs a customer written
        {k: [floor(b - t * 1000) for t in occ[k]] for k in sorted(occ)},
        _hashes(s.seen_events),
        _session(s.session, base),
        None if s.last_support_contact is None else base - _ms(s.last_support_contact),
        s.last_friction,
        {k: base - _ms(t) for k, t in sorted(s.last_contact_by_rule.items())},
        {k: base - _ms(t) for k, t in sorted(s.last_contact_by_channel.items())},
        _hashes(s.recent_actions),
        s.last_offset,
        s.last_churn_risk,
        _before(base, s.contact_times),
        s.last_contact_risk,
    ]
    return msgpack.packb(wire, use_bin_type=True)  # type: ignore[no-any-return]


def last_seen_of(data: bytes) -> float:
    """The time of the customer's last event in ``encode_state``'s bytes, without reading the
    rest (-inf: a profile alone); ``StateDecodeError`` as ``decode_state`` would.

    >>> from forewarn.models.state import CustomerState
    >>> s = CustomerState("c1", first_seen=2.0, last_seen=12.5, events_seen=1)
    >>> last_seen_of(encode_state(s))
    12.5
    """
    try:
        u = msgpack.Unpacker(raw=False, strict_map_key=False)
        u.feed(data)
        if u.read_array_header() < 6 or u.unpack() != VERSION:
            raise StateDecodeError(f"not a version-{VERSION} customer state")
        u.skip()  # customer id
        u.skip()  # profile
        base = u.unpack()
        u.skip()  # first seen
        seen: float = base / 1000 if u.unpack() else -math.inf
        return seen
    except StateDecodeError:
        raise
    except Exception as e:
        raise StateDecodeError(f"unreadable customer state: {type(e).__name__}: {e}") from e


def decode_state(data: bytes) -> CustomerState:
    """The state ``encode_state`` wrote; ``StateDecodeError`` for anything else."""
    try:
        w = msgpack.unpackb(data, raw=False, strict_map_key=False)
        if not isinstance(w, list) or w[0] != VERSION:
            raise StateDecodeError(f"not a version-{VERSION} customer state")
        (_, cid, profile, base, first, n, signals, occ, seen, sess, support, friction, by_rule,
         by_channel, actions, last_offset, churn, contacts, *later) = w  # fmt: skip
        b = base / 1000

        def t(delta: int) -> float:
            seconds: float = (base - delta) / 1000
            return seconds

        session = SessionState()
        if sess is not None:
            key, started, last, pages, rage, flags = sess
            session = SessionState(
                key, t(started), t(last), pages, rage, bool(flags & 1), bool(flags & 2),
                bool(flags & 4),
            )  # fmt: skip
        return CustomerState(
            customer_id=cid,
            profile=_unprofile(profile),
            first_seen=t(first) if n else math.inf,
            last_seen=b if n else -math.inf,
            events_seen=n,
            signals={i: [v, t(d)] for i, v, d in signals},
            occurrences={k: [(base - d) / 1000 for d in ds] for k, ds in occ.items()},
            seen_events=_unhash(seen),
            session=session,
            last_support_contact=None if support is None else t(support),
            last_friction=friction,
            last_contact_by_rule={k: t(d) for k, d in by_rule.items()},
            last_contact_by_channel={k: t(d) for k, d in by_channel.items()},
            recent_actions=_unhash(actions),
            last_offset=last_offset,
            last_churn_risk=churn,
            contact_times=[t(d) for d in contacts],
            last_contact_risk=later[0] if later else 0.0,
        )
    except StateDecodeError:
        raise
    except Exception as e:  # malformed bytes: say so in one type
        raise StateDecodeError(f"unreadable customer state: {type(e).__name__}: {e}") from e
