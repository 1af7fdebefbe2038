"""Decoding: plain JSON, CloudEvents binary and structured, aliases, every dead-letter reason."""

from __future__ import annotations

import base64
import hashlib
import json
from datetime import UTC, datetime, timedelta

import pytest

from forewarn.models.contracts import CustomerProfile, DeadLetter, DeadLetterReason
from forewarn.offline.samples import (
    BAD_KINDS,
    as_cloudevent_binary,
    as_cloudevent_structured,
    bad_record,
)
from forewarn.pipeline.codecs import (
    DEAD_LETTER_KEEP_BYTES,
    DecodedEvent,
    DecodeSettings,
    Headers,
    PartialProfile,
    ProfileTombstone,
    RawRecord,
    decode_event,
    decode_profile,
    encode,
)
from tests.conftest import T0, event, fields_of

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
    assert fields_of(got.event) == fields_of(e)
    assert got.key_status == "ok"


@pytest.mark.parametrize("wrap", [as_cloudevent_binary, as_cloudevent_structured])
def test_cloudevents_modes_decode_to_the_same_event(wrap: object) -> None:
    e = event("c1", "checkout_error", T0, n=2, step="payment")
    key, value, headers = wrap(e)  # type: ignore[operator]
    got = _ok(_rec(value, key, headers)).event
    assert {**fields_of(got), "source": None} == {**fields_of(e), "source": None}


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
    assert value is not None
    dl = _dead(_rec(value, key, headers))
    assert dl.error_type is kind
    assert dl.error_detail
    assert (dl.source_topic, dl.partition, dl.offset) == (TOPIC, 3, 42)
    kept = base64.b64decode(dl.value_base64 or "")
    if kind is DeadLetterReason.too_large:  # beyond the bound: its start, its size and hash
        assert value.startswith(kept) and len(kept) == DEAD_LETTER_KEEP_BYTES
        (cut,) = dl.truncated
        assert (cut.part, cut.original_bytes) == ("value", len(value))
        assert cut.sha256 == hashlib.sha256(value).hexdigest()
    else:
        assert kept == value and not dl.truncated, "original bytes kept"
    assert dl.original_bytes == len(key or b"") + len(value) + sum(
        len(k) + len(v or b"") for k, v in headers
    )
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


# -- what an adversarial test found (issue 9): each of these failed before its fix --

_CE = (("ce_specversion", b"1.0"), ("ce_type", b"page_view"), ("ce_time", T0.isoformat().encode()))


def test_two_distinct_non_utf8_cloudevent_ids_are_dead_lettered_not_merged() -> None:
    # Decoded with replacement characters, both ids became the same event id, and the
    # second event was dropped as a duplicate of the first.
    a = _dead(_rec(b'{"customer_id": "c1"}', b"c1", (*_CE, ("ce_id", b"id-\xff"))))
    b = _dead(_rec(b'{"customer_id": "c1"}', b"c1", (*_CE, ("ce_id", b"id-\xfe"))))
    for dl in (a, b):
        assert dl.error_type is DeadLetterReason.not_utf8
        assert "header 'ce_id' is not UTF-8" in dl.error_detail
    assert a.headers != b.headers, "each keeps its own original bytes"
    # a non-UTF-8 key standing in for the customer id, and a non-UTF-8 content type
    keyed = _dead(_rec(b"{}", b"c\xff", (*_CE, ("ce_id", b"x"))))
    assert (keyed.error_type, keyed.error_detail[:22]) == (
        DeadLetterReason.not_utf8,
        "key is not UTF-8: 'utf",
    )
    typed = _dead(_rec(b"{}", b"c1", (("content-type", b"application/\xffjson"),)))
    assert typed.error_type is DeadLetterReason.not_utf8


def test_a_tombstone_whose_key_is_not_utf8_deletes_nobody() -> None:
    got = decode_profile(RawRecord("customer-profiles", 0, 1, b"c\xff1", None), NOW)
    assert isinstance(got, DeadLetter) and got.error_type is DeadLetterReason.not_utf8


@pytest.mark.parametrize("key", [b" forewarn:volume", b"ann ", b"x" * 129])
def test_a_tombstone_whose_key_is_no_customer_id_deletes_nothing(key: bytes) -> None:
    """A key with a leading space names a partition record (the volume thresholds): a
    tombstone for it must not reach the store."""
    got = decode_profile(RawRecord("customer-profiles", 0, 1, key, None), NOW)
    assert isinstance(got, DeadLetter) and got.error_type is DeadLetterReason.schema_violation
    assert "not a customer id" in (got.error_detail or "")


def _with(extra: str) -> bytes:
    return (
        '{"event_id":"e1","customer_id":"c1","type":"page_view",'
        f'"occurred_at":"{T0.isoformat()}"{extra}}}'
    ).encode()


@pytest.mark.parametrize(
    ("extra", "reason", "detail"),
    [
        (',"properties":{"a":' + "[" * 20_000 + "]" * 20_000 + "}",
         DeadLetterReason.nesting_too_deep, "recursion limit exceeded"),
        (',"value":' + "9" * 5_000, DeadLetterReason.number_out_of_range, "number out of range"),
        (',"properties":{"n":' + "9" * 5_000 + "}",
         DeadLetterReason.number_out_of_range, "number out of range"),
        (',"value":NaN', DeadLetterReason.malformed_json, "expected value"),
        (',"value":Infinity', DeadLetterReason.malformed_json, "expected value"),
        (',"value":1e400', DeadLetterReason.schema_violation, "value: Input should be a finite"),
    ],
    ids=["deep", "huge-int-value", "huge-int-property", "nan", "infinity", "1e400"],
)  # fmt: skip
def test_json_beyond_what_numbers_and_parsers_hold_has_its_own_reason(
    extra: str, reason: DeadLetterReason, detail: str
) -> None:
    dl = _dead(_rec(_with(extra)))
    assert dl.error_type is reason
    assert detail in dl.error_detail


@pytest.mark.parametrize("structured", [False, True])
def test_cloudevents_other_than_1_0_are_refused(structured: bool) -> None:
    e = event("c1", "page_view", T0, n=1)
    key, value, headers = (as_cloudevent_structured if structured else as_cloudevent_binary)(e)
    if structured:
        value = json.dumps({**json.loads(value or b""), "specversion": "0.3"}).encode()
    else:
        headers = tuple((k, b"0.3" if k == "ce_specversion" else v) for k, v in headers)
    dl = _dead(_rec(value, key, headers))
    assert dl.error_type is DeadLetterReason.schema_violation
    assert "only CloudEvents 1.0 is supported, got '0.3'" in dl.error_detail


@pytest.mark.parametrize(
    "record",
    [
        RawRecord(TOPIC, 0, 1, b"c1", b"x" * 5_000_000),
        RawRecord(TOPIC, 0, 2, b"c1", b"y" * 60_000, (("trace", b"z" * 900_000),)),
        RawRecord(TOPIC, 0, 3, b"k" * 800_000, b"{}"),
        RawRecord(TOPIC, 0, 4, b"c1", b"{}", tuple((f"h{i}" * 50, b"v" * 900) for i in range(999))),
    ],
    ids=["5MB-value", "900KB-header", "800KB-key", "999-headers"],
)  # fmt: skip
def test_a_dead_letter_always_fits_and_says_what_was_cut(record: RawRecord) -> None:
    dl = _dead(record)
    size = len(encode(dl))
    assert size < 200_000, "far below Kafka's 1 MB default, whatever came in"
    full = len(record.key or b"") + len(record.value or b"")
    full += sum(len(k) + len(v or b"") for k, v in record.headers)
    assert dl.original_bytes == full
    assert dl.truncated, "every cut is listed"
    for cut in dl.truncated:
        assert cut.kept_bytes < cut.original_bytes and len(cut.sha256) == 64
    parts = {c.part: c for c in dl.truncated}
    if "value" in parts:
        assert parts["value"].sha256 == hashlib.sha256(record.value or b"").hexdigest()
    if len(record.headers) > 64:
        assert len(dl.headers) == 64 and "headers" in parts


@pytest.mark.parametrize("tz", ["America", "x" * 300, "../../etc/passwd", ""])
def test_a_profile_with_an_unusable_time_zone_is_kept_without_it(tz: str) -> None:
    raw = json.dumps(
        {"customer_id": "c1", "consent": {"email": True}, "do_not_contact": True, "timezone": tz}
    ).encode()
    got = decode_profile(RawRecord("customer-profiles", 0, 5, b"c1", raw), NOW)
    assert isinstance(got, PartialProfile), got
    # consent and do-not-contact are what matter most: they are kept
    assert got.profile.do_not_contact and got.profile.consent.email
    assert got.profile.timezone == "UTC"
    assert got.ignored.error_type is DeadLetterReason.field_ignored
    assert got.ignored.error_detail.startswith("timezone: ")
    assert "quiet hours in UTC" in got.ignored.error_detail
    # another problem besides the time zone: the profile as a whole is refused
    worse = json.dumps({"customer_id": "", "timezone": tz}).encode()
    refused = decode_profile(RawRecord("customer-profiles", 0, 6, b"c1", worse), NOW)
    assert isinstance(refused, DeadLetter)
    assert refused.error_type is DeadLetterReason.invalid_customer_id


def test_an_oversized_profile_is_dead_lettered_within_bounds() -> None:
    raw = json.dumps({"customer_id": "c1", "tier": "g" * 800_000}).encode()
    got = decode_profile(RawRecord("customer-profiles", 0, 7, b"c1", raw), NOW)
    assert isinstance(got, DeadLetter) and got.error_type is DeadLetterReason.too_large
    assert len(encode(got)) < 200_000


def test_the_size_limit_counts_headers_too() -> None:
    e = encode(event("c1", "page_view", T0, n=1))
    dl = _dead(_rec(e, b"c1", (("trace", b"h" * 900_000),)))
    assert dl.error_type is DeadLetterReason.too_large
    assert "value and headers are" in dl.error_detail
