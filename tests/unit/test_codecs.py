"""Decoding: plain JSON, CloudEvents binary and structured, aliases, every dead-letter reason."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta

import pytest

from forewarn.models.contracts import CustomerProfile, DeadLetter, DeadLetterReason
from forewarn.streams.codecs import (
    DecodedEvent,
    DecodeSettings,
    Headers,
    ProfileTombstone,
    RawRecord,
    decode_event,
    decode_profile,
    encode,
)
from forewarn.streams.simulate import (
    BAD_KINDS,
    as_cloudevent_binary,
    as_cloudevent_structured,
    bad_record,
)
from tests.conftest import T0, event

NOW = T0 + timedelta(minutes=1)
TOPIC = "journey-events"


def _rec(value: bytes | None, key: bytes | None = b"c1", headers: Headers = ()) -> RawRecord:
    return RawRecord(TOPIC, 3, 42, key, value, headers)


def _ok(rec: RawRecord, settings: DecodeSettings | None = None) -> DecodedEvent:
    out = decode_event(rec, settings or DecodeSettings(), NOW)
    assert isinstance(out, DecodedEvent), out
    return out


def _dead(rec: RawRecord, settings: DecodeSettings | None = None) -> DeadLetter:
    out = decode_event(rec, settings or DecodeSettings(), NOW)
    assert isinstance(out, DeadLetter), out
    return out


def test_plain_json_round_trips() -> None:
    e = event("c1", "payment_failed", T0, n=1, order_id="o1")
    got = _ok(_rec(encode(e)))
    assert got.event == e
    assert got.key_status == "ok"


@pytest.mark.parametrize("wrap", [as_cloudevent_binary, as_cloudevent_structured])
def test_cloudevents_modes_decode_to_the_same_event(wrap: object) -> None:
    e = event("c1", "checkout_error", T0, n=2, step="payment")
    key, value, headers = wrap(e)  # type: ignore[operator]
    got = _ok(_rec(value, key, headers)).event
    assert got.model_dump(exclude={"source"}) == e.model_dump(exclude={"source"})


def test_cloudevents_customer_from_subject_when_data_lacks_it() -> None:
    headers = (
        ("ce_specversion", b"1.0"),
        ("ce_id", b"x1"),
        ("ce_type", b"page_view"),
        ("ce_time", T0.isoformat().encode()),
        ("ce_subject", b"c9"),
        ("ce_source", b"/web"),
    )
    got = _ok(_rec(b"{}", b"c9", headers)).event
    assert (got.customer_id, got.event_id, got.source) == ("c9", "x1", "/web")


def test_aliases_map_upstream_names_before_validation() -> None:
    raw = {"event_id": "e", "customer_id": "c1", "type": "pay_fail", "occurred_at": T0.isoformat()}
    settings = DecodeSettings(aliases={"pay_fail": "payment_failed"})
    assert _ok(_rec(json.dumps(raw).encode()), settings).event.type == "payment_failed"


def test_unknown_type_is_accepted_unless_strict() -> None:
    raw = encode(event("c1", "loyalty_points_redeemed", T0, n=1))
    assert _ok(_rec(raw)).event.type == "loyalty_points_redeemed"
    strict = DecodeSettings(strict_types=True)
    assert _dead(_rec(raw), strict).error_type is DeadLetterReason.unknown_event_type
    custom = DecodeSettings(strict_types=True, custom_types=frozenset({"loyalty_points_redeemed"}))
    assert _ok(_rec(raw), custom).event.type == "loyalty_points_redeemed"


@pytest.mark.parametrize("kind", BAD_KINDS, ids=lambda k: k.value)
def test_every_bad_input_kind_is_dead_lettered_with_its_reason(kind: DeadLetterReason) -> None:
    key, value, headers = bad_record(kind, NOW, 1)
    dl = _dead(_rec(value, key, headers))
    assert dl.error_type is kind
    assert dl.error_detail
    assert (dl.source_topic, dl.partition, dl.offset) == (TOPIC, 3, 42)
    assert base64.b64decode(dl.value_base64 or "") == value, "original bytes kept"
    assert [h.key for h in dl.headers] == [k for k, _ in headers]


@pytest.mark.parametrize(
    ("customer_id", "why"), [("", "at least 1"), ("   ", "at least 1"), ("x" * 129, "at most 128")]
)
def test_customer_id_empty_or_too_long(customer_id: str, why: str) -> None:
    raw = {
        "event_id": "e",
        "customer_id": customer_id,
        "type": "page_view",
        "occurred_at": T0.isoformat(),
    }
    dl = _dead(_rec(json.dumps(raw).encode()))
    assert dl.error_type is DeadLetterReason.invalid_customer_id
    assert why in dl.error_detail


def test_schema_violation_names_the_field() -> None:
    raw = {
        "event_id": "e",
        "customer_id": "c1",
        "type": "page_view",
        "occurred_at": "2026-03-01T12:00:00",
    }  # no time zone
    dl = _dead(_rec(json.dumps(raw).encode()))
    assert dl.error_type is DeadLetterReason.schema_violation
    assert dl.error_detail.startswith("occurred_at:")
    assert "timezone" in dl.error_detail


def test_size_limit_and_future_tolerance_are_settings() -> None:
    e = event("c1", "page_view", NOW + timedelta(minutes=10), n=1)
    assert _dead(_rec(encode(e))).error_type is DeadLetterReason.future_timestamp
    lenient = DecodeSettings(future_tolerance=timedelta(hours=1))
    assert _ok(_rec(encode(e)), lenient)
    small = DecodeSettings(max_bytes=256)
    big = encode(event("c1", "page_view", T0, n=1, note="y" * 300))
    assert _dead(_rec(big), small).error_type is DeadLetterReason.too_large


def test_json_that_is_not_an_object_and_empty_values() -> None:
    assert _dead(_rec(b"[1, 2]")).error_type is DeadLetterReason.schema_violation
    assert _dead(_rec(None)).error_type is DeadLetterReason.schema_violation


def test_binary_mode_with_non_json_data_is_unsupported() -> None:
    headers = (("ce_specversion", b"1.0"), ("content-type", b"application/protobuf"))
    assert _dead(_rec(b"\x08\x01", b"c1", headers)).error_type is (
        DeadLetterReason.unsupported_content_type
    )


def test_missing_and_mismatched_keys_use_the_payload_and_say_so() -> None:
    raw = encode(event("c1", "page_view", T0, n=1))
    assert _ok(_rec(raw, key=None)).key_status == "missing"
    other = _ok(_rec(raw, key=b"someone-else"))
    assert other.key_status == "mismatch"
    assert other.event.customer_id == "c1"


def test_profiles_and_tombstones() -> None:
    p = CustomerProfile(customer_id="c1", timezone="Europe/Berlin")
    got = decode_profile(RawRecord("customer-profiles", 0, 0, b"c1", encode(p)), NOW)
    assert got == p
    tomb = decode_profile(RawRecord("customer-profiles", 0, 1, b"c1", None), NOW)
    assert tomb == ProfileTombstone("c1")
    bad = decode_profile(RawRecord("customer-profiles", 0, 2, b"c1", b"{oops"), NOW)
    assert isinstance(bad, DeadLetter)
    assert bad.error_type is DeadLetterReason.malformed_json


def test_dead_letter_is_timestamped_now() -> None:
    dl = _dead(_rec(b"{"))
    assert dl.failed_at == NOW
    assert dl.failed_at.tzinfo is UTC or dl.failed_at.utcoffset() == timedelta(0)
    assert datetime.fromisoformat(json.loads(encode(dl))["failed_at"].replace("Z", "+00:00"))
