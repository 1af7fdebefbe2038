"""The fast reader of plain JSON events against the contract it stands in for.

Whatever bytes come, an event the fast reader accepts is exactly the event the pydantic
contract validates from the same bytes; when it is not sure it declines, and the contract
decides. And it does read the ordinary events (else it would be dead weight).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from forewarn.models.contracts import MAX_PROPERTIES, DeadLetter, DeadLetterReason, JourneyEvent
from forewarn.offline.simulator import JourneySimulator
from forewarn.pipeline.codecs import DecodedEvent, DecodeSettings, RawRecord, decode_event, encode
from forewarn.pipeline.plain_events import PlainEvent, _Wire, read_plain_event
from tests.conftest import fields_of

ALIASES = {"pay_fail": "payment_failed", "too_long": "x" * 65, "empty": ""}


def _limits(schema: dict[str, Any]) -> tuple[Any, ...]:
    """A field's JSON-schema limits, looking through ``anyOf`` (optional fields)."""
    parts = schema.get("anyOf", [schema])
    return tuple(
        sorted((k, v) for p in parts for k, v in p.items() if k in ("minLength", "maxLength"))
    )


def test_the_reader_declares_the_contracts_fields_with_its_limits() -> None:
    contract = JourneyEvent.model_json_schema()
    _, components = msgspec.json.schema_components([_Wire])
    wire = components["_Wire"]
    names = list(JourneyEvent.model_fields)
    assert list(_Wire.__struct_fields__) == names == list(PlainEvent.__struct_fields__)
    assert set(wire["required"]) == set(contract["required"])
    for name in names:
        if name == "occurred_at":  # text here, checked by the reader's own pattern
            continue
        assert _limits(wire["properties"][name]) == _limits(contract["properties"][name]), name
    defaults = {n: f.get_default(call_default_factory=True) for n, f in
                JourneyEvent.model_fields.items() if not f.is_required()}  # fmt: skip
    wire_defaults = {
        f.name: f.default_factory() if f.default_factory is not msgspec.NODEFAULT else f.default
        for f in msgspec.structs.fields(_Wire)
        if f.name in defaults
    }
    assert wire_defaults == defaults


_ODD_STAMPS = (
    *("2026-02-30T00:00:00Z", "2026-01-01T24:00:00Z", "2026-01-01T00:00:60Z"),
    *("2026-01-01T00:00Z", "2026-01-01T00:00:00", "2026-01-01", "20260101T000000Z"),
    *("2026-01-01T00:00:00+0100", "2026-01-01T00:00:00+24:00", "0000-01-01T00:00:00Z"),
    *("2026-01-01T00:00:00.Z", "2026-W01-1T00:00:00Z", "2026-01-01T00:00:00z"),
)


def _stamp() -> st.SearchStrategy[Any]:
    # hypothesis bounds are naive; the instants it draws are in UTC
    first, last = datetime(1, 1, 2), datetime(9999, 12, 30)  # noqa: DTZ001
    instants = st.datetimes(min_value=first, max_value=last, timezones=st.just(UTC))
    offsets = st.integers(-24 * 60 + 1, 24 * 60 - 1).map(lambda m: timedelta(minutes=m))

    def written(at: datetime, offset: timedelta, digits: int, sep: str, zulu: bool) -> str:
        local = at.astimezone(timezone(offset)).replace(tzinfo=None)
        text = f"{local.year:04d}-" + local.strftime(f"%m-%d{sep}%H:%M:%S")
        if digits:
            text += "." + f"{local.microsecond:06d}{at.microsecond % 1000:03d}"[:digits]
        if zulu and not offset:
            return text + "Z"
        sign, minutes = ("-", -offset) if offset < timedelta(0) else ("+", offset)
        hh, mm = divmod(int(minutes.total_seconds()) // 60, 60)
        return f"{text}{sign}{hh:02d}:{mm:02d}"

    return _mostly(
        st.builds(
            written, instants, offsets, st.integers(0, 9), st.sampled_from("T t"), st.booleans()
        ),
        st.sampled_from(_ODD_STAMPS) | st.integers(-(2**40), 2**40) | st.text(max_size=30),
    )


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)
_TEXT = st.text(
    st.characters(codec="utf-8") | st.sampled_from(" \t\n\x1c\x1f\x85\xa0\u2028\u3000"),
    max_size=8,
)


def _mostly(valid: st.SearchStrategy[Any], odd: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """``valid`` four times in five: an event with one odd field is the interesting case."""
    return st.sampled_from((False,) * 4 + (True,)).flatmap(lambda o: odd if o else valid)


def _id(max_size: int) -> st.SearchStrategy[Any]:
    long = st.integers(max_size - 1, max_size + 1).map(lambda n: "i" * n)
    odd = _TEXT | long | st.integers() | st.none()
    return _mostly(st.from_regex(r"[a-z0-9-]{1,12}", fullmatch=True), odd)


_EVENT = st.fixed_dictionaries(
    {
        "event_id": _id(256),
        "customer_id": _id(128),
        "type": _mostly(
            st.sampled_from(["pay_fail", "page_view", "x" * 64]) | _TEXT,
            st.sampled_from(["too_long", "empty", "x" * 65]) | st.integers(),
        ),
        "occurred_at": _stamp(),
    },
    optional={
        "source": _mostly(st.none() | _TEXT, st.integers()),
        "channel": _mostly(
            st.sampled_from(["web", "app", "email"]) | st.none(),
            st.sampled_from(["fax", "WEB"]) | st.integers(),
        ),
        "session_id": st.none() | _id(256),
        "value": _mostly(
            st.none() | st.floats() | st.integers(-(2**60), 2**60),
            st.integers(-(2**1100), 2**1100) | st.booleans() | st.sampled_from(["1.5", "x"]),
        ),
        "properties": _mostly(
            st.dictionaries(st.text(max_size=4), _JSON, max_size=3),
            st.none()
            | st.integers(MAX_PROPERTIES - 1, MAX_PROPERTIES + 1).map(
                lambda n: {f"p{i}": i for i in range(n)}
            ),
        ),
        "extra": _JSON,
    },
)


def _contract(value: bytes) -> JourneyEvent | None:
    try:
        return JourneyEvent.model_validate_json(value, context={"aliases": ALIASES})
    except ValidationError:
        return None


def _agrees(value: bytes) -> bool:
    """Whether the reader read ``value`` (else it declined); raises if it read it otherwise
    than the contract."""
    read = read_plain_event(value, ALIASES)
    if read is None:
        return False  # the contract decides (the general path)
    contract = _contract(value)
    assert contract is not None, value
    assert fields_of(read) == fields_of(contract), value
    assert read.occurred_at.utcoffset() == contract.occurred_at.utcoffset()
    return True


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_EVENT, st.booleans(), st.booleans())
def test_what_the_reader_accepts_the_contract_reads_the_same(
    data: dict[str, Any], ascii_only: bool, nan_tokens: bool
) -> None:
    try:
        value = json.dumps(data, ensure_ascii=ascii_only, allow_nan=nan_tokens).encode()
    except (ValueError, UnicodeEncodeError):  # NaN refused, or a lone surrogate
        return
    _agrees(value)


_BASE = {"event_id": "e1", "customer_id": "c1", "type": "page_view",
         "occurred_at": "2026-01-01T10:00:00Z"}  # fmt: skip
_MANY = {f"p{i}": i for i in range(MAX_PROPERTIES + 1)}


_ODD_FIELDS = [
        ("customer_id", " c1", False), ("customer_id", "c1\t", False),
        ("customer_id", "\u3000c1", False), ("customer_id", "c" * 129, False),
        ("properties", _MANY, False), ("properties", dict(list(_MANY.items())[:-1]), True),
        ("type", "too_long", False), ("type", "empty", False), ("type", "pay_fail", True),
        ("occurred_at", "2026-01-01T10:00:00.123456789Z", True),
        ("occurred_at", "2026-01-01T10:00:00.1234567891Z", False),
        ("occurred_at", "2026-01-01 10:00:00+05:30", True),
        ("occurred_at", "2026-01-01t10:00:00z", False), ("occurred_at", "2026-01-01T10:00Z", False),
        ("occurred_at", "20260101T100000Z", False), ("occurred_at", "2026-02-30T10:00:00Z", False),
        ("occurred_at", "2026-01-01T24:00:00Z", False),
        ("occurred_at", "2026-01-01T10:00:00+24:00", False),
        ("occurred_at", "2026-01-01T10:00:00", False), ("occurred_at", 1767261600, False),
        ("value", 2**1100, False), ("value", "1.5", False), ("value", True, False),
        ("value", 12, True), ("channel", "fax", False), ("channel", "app", True),
]  # fmt: skip


@pytest.mark.parametrize(("field", "value", "read"), _ODD_FIELDS)
def test_each_odd_field_is_read_as_the_contract_reads_it_or_left_to_it(
    field: str, value: Any, read: bool
) -> None:
    assert _agrees(json.dumps({**_BASE, field: value}).encode()) is read


def test_the_reader_reads_every_ordinary_event() -> None:
    start = datetime(2026, 3, 1, tzinfo=UTC)
    sim = JourneySimulator(200, seed=5, start=start, span=timedelta(days=2))
    events = [e for _, e in zip(range(2000), sim.events(), strict=False)]
    for e in events:
        rec = RawRecord("journey-events", 0, 0, e.customer_id.encode(), encode(e))
        out = decode_event(rec, DecodeSettings(), start + timedelta(days=3))
        assert isinstance(out, DecodedEvent) and isinstance(out.event, PlainEvent)
        assert fields_of(out.event) == fields_of(e)


def test_aliases_map_the_type_and_the_contract_judges_a_bad_mapping() -> None:
    base = {"event_id": "e1", "customer_id": "c1", "occurred_at": "2026-01-01T00:00:00Z"}
    for kind, expected in (("pay_fail", "payment_failed"), ("too_long", None), ("empty", None)):
        value = json.dumps({**base, "type": kind}).encode()
        read = read_plain_event(value, ALIASES)
        assert (None if read is None else read.type) == expected


_PLAIN = (b'{"event_id":"e1","customer_id":"c1","type":"purchase",'
          b'"occurred_at":"2026-01-01T00:00:00Z"%s}')  # fmt: skip
_AT = datetime(2026, 1, 1, tzinfo=UTC)


def _decode(extra: bytes) -> DecodedEvent | DeadLetter:
    rec = RawRecord("journey-events", 0, 0, b"c1", _PLAIN % extra)
    return decode_event(rec, DecodeSettings(), _AT + timedelta(days=1))


@pytest.mark.parametrize(
    ("extra", "reason"),
    [
        # what the reader skips unchecked in a field the contract does not declare
        (b',"x":' + b"[" * 250 + b"]" * 250, DeadLetterReason.nesting_too_deep),
        (b',"x":"\xff"', DeadLetterReason.not_utf8),
        (b',"x\xc3":1', DeadLetterReason.not_utf8),
        (b',"x":' + b"7" * 4400, DeadLetterReason.number_out_of_range),
    ],
)
def test_what_the_reader_skips_the_contract_still_refuses(
    extra: bytes, reason: DeadLetterReason
) -> None:
    out = _decode(extra)
    assert isinstance(out, DeadLetter) and out.error_type == reason


@pytest.mark.parametrize(
    "extra",
    [
        b',"properties":{"a":NaN}',  # the contract's parser takes NaN where it allows floats
        b',"specversion":"1.0","customer_id":" c1"',  # plain JSON, whatever keys it carries
        b',"specversion":"1.0","id":"ce1","data":{"x":1},"customer_id":"c1 "',
        b',"occurred_at":"2026-01-01T00:00:00+0000"',  # a stamp only the contract reads
    ],
)
def test_what_the_reader_leaves_is_validated_as_the_contract_from_bytes(extra: bytes) -> None:
    out = _decode(extra)
    assert isinstance(out, DecodedEvent) and isinstance(out.event, JourneyEvent)
    e = out.event
    assert (e.event_id, e.customer_id, e.occurred_at) == ("e1", "c1", _AT)
