"""Decoding raw Kafka records into contracts, and encoding contracts back.

Pure: a ``RawRecord`` is plain data, so every rule here is unit-tested without a broker.
An event arrives as plain JSON, as a CloudEvent in binary mode (``ce_*`` headers, the value
is the data) or in structured mode (``content-type: application/cloudevents+json``). Anything
that cannot become a valid ``JourneyEvent`` becomes a ``DeadLetter`` with a typed reason and
the original bytes.

>>> from datetime import UTC, datetime
>>> rec = RawRecord("journey-events", 0, 7, b"c1",
...     b'{"event_id":"e1","customer_id":"c1","type":"pay_fail",'
...     b'"occurred_at":"2026-01-01T00:00:00Z"}')
>>> out = decode_event(rec, DecodeSettings(aliases={"pay_fail": "payment_failed"}),
...                    datetime(2026, 1, 1, tzinfo=UTC))
>>> out.event.type, out.key_status
('payment_failed', 'ok')
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ValidationError
from pydantic_core import from_json

from forewarn.models.contracts import (
    VOCABULARY,
    CustomerProfile,
    DeadLetter,
    DeadLetterReason,
    Header,
    JourneyEvent,
    Truncation,
)
from forewarn.models.event_fields import EventFields
from forewarn.pipeline.plain_events import read_plain_event

Headers = tuple[tuple[str, bytes | None], ...]
KeyStatus = Literal["ok", "missing", "mismatch"]

CLOUDEVENTS_JSON = "application/cloudevents+json"
CLOUDEVENTS_VERSION = "1.0"
_JSON_TYPES = ("application/json", "text/json")
#: largest profile record accepted (profiles are small; the bound keeps state records small)
MAX_PROFILE_BYTES = 64 * 1024

#: original bytes a dead letter keeps of a record's value (64 KiB: every event small enough
#: to be accepted is kept whole); a quarter of it for the headers together, and a little
#: for the key. Base64 makes that about 110 KB at most, far below Kafka's 1 MB default.
DEAD_LETTER_KEEP_BYTES = 64 * 1024
_KEY_KEEP_BYTES = 1024
_HEADERS_KEPT = 64
_HEADER_NAME_CHARS = 256


@dataclass(slots=True)  # read-only by convention: frozen cost 0.5 µs more a record
class RawRecord:
    """A consumed Kafka record as plain data."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: Headers = ()


@dataclass(frozen=True, slots=True)
class DecodeSettings:
    #: upstream event type -> canonical type (e.g. ``{"pay_fail": "payment_failed"}``)
    aliases: Mapping[str, str] = field(default_factory=dict)
    max_bytes: int = 64 * 1024
    future_tolerance: timedelta = timedelta(minutes=5)
    #: refuse event types outside the vocabulary (and ``custom_types``) instead of counting
    #: them as ``other``
    strict_types: bool = False
    custom_types: frozenset[str] = frozenset()
    #: original bytes a dead letter keeps of the value (see ``DEAD_LETTER_KEEP_BYTES``)
    dead_letter_keep_bytes: int = DEAD_LETTER_KEEP_BYTES
    #: handed to pydantic on every validation (built once here, not per record)
    validation_context: dict[str, Any] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "validation_context", {"aliases": self.aliases})


@dataclass(slots=True)  # not frozen, as RawRecord
class DecodedEvent:
    event: EventFields
    key_status: KeyStatus


@dataclass(frozen=True, slots=True)
class ProfileTombstone:
    customer_id: str


class Rejected(Exception):
    def __init__(self, reason: DeadLetterReason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


_M = TypeVar("_M", bound=BaseModel)


def _b64(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode("ascii")


class _Keeper:
    """Cuts the parts of a record to a byte budget, noting each cut as a ``Truncation``."""

    def __init__(self) -> None:
        self.cuts: list[Truncation] = []

    def keep(self, part: str, data: bytes | None, budget: int) -> bytes | None:
        if data is None or len(data) <= budget:
            return data
        kept = max(0, budget)
        self.cuts.append(
            Truncation(
                part=part,
                original_bytes=len(data),
                kept_bytes=kept,
                sha256=hashlib.sha256(data).hexdigest(),
            )
        )
        return data[:kept]


def dead_letter(
    rec: RawRecord,
    reason: DeadLetterReason,
    detail: str,
    at: datetime,
    keep_bytes: int = DEAD_LETTER_KEEP_BYTES,
) -> DeadLetter:
    """A dead letter for ``rec`` that always fits in a Kafka record.

    The value is kept up to ``keep_bytes``, the headers up to a quarter of that together
    (at most 64 of them), the key up to 1 KiB; every cut is listed with the part's original
    size and SHA-256, so the record can still be found and matched at its source.

    >>> from datetime import UTC, datetime
    >>> big = RawRecord("journey-events", 0, 9, b"c1", b"x" * 100_000)
    >>> dl = dead_letter(big, DeadLetterReason.too_large, "too big", datetime.now(UTC), 1000)
    >>> dl.original_bytes, [(t.part, t.original_bytes, t.kept_bytes) for t in dl.truncated]
    (100002, [('value', 100000, 1000)])
    """
    keeper = _Keeper()
    value = keeper.keep("value", rec.value, keep_bytes)
    key = keeper.keep("key", rec.key, _KEY_KEEP_BYTES)
    headers, budget = [], keep_bytes // 4
    for name, v in rec.headers[:_HEADERS_KEPT]:
        kept = keeper.keep(f"header:{name[:_HEADER_NAME_CHARS]}", v, budget)
        budget -= len(kept or b"")
        headers.append(Header(key=name[:_HEADER_NAME_CHARS], value_base64=_b64(kept)))
    dropped = rec.headers[_HEADERS_KEPT:]
    if dropped:
        keeper.keep("headers", b"".join(k.encode() + (v or b"") for k, v in dropped), 0)
    size = len(rec.key or b"") + len(rec.value or b"")
    size += sum(len(k.encode()) + len(v or b"") for k, v in rec.headers)
    return DeadLetter(
        source_topic=rec.topic,
        partition=rec.partition,
        offset=rec.offset,
        key_base64=_b64(key),
        value_base64=_b64(value),
        headers=headers,
        error_type=reason,
        error_detail=detail[:2000],
        failed_at=at,
        original_bytes=size,
        truncated=keeper.cuts,
    )


def _text(data: bytes, what: str) -> str:
    """UTF-8 text, or a ``not_utf8`` rejection naming ``what``: never a guess.

    Decoding with replacement characters would make two different ids equal.
    """
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise Rejected(DeadLetterReason.not_utf8, f"{what} is not UTF-8: {e}") from e


def _header(headers: Headers, name: str) -> str | None:
    for k, v in headers:
        if k.lower() == name and v is not None:
            return _text(v, f"header {k!r}")
    return None


def _content_type(headers: Headers) -> str | None:
    raw = _header(headers, "content-type")
    return raw.split(";", 1)[0].strip().lower() if raw else None


def _is_json_type(ct: str) -> bool:
    return ct in _JSON_TYPES or (ct.startswith("application/") and ct.endswith("+json"))


def _json_object(rec: RawRecord, max_bytes: int) -> dict[str, Any]:
    value = rec.value
    if value is None or not value:
        raise Rejected(DeadLetterReason.schema_violation, "empty value: an event needs a body")
    if len(value) > max_bytes:
        raise Rejected(
            DeadLetterReason.too_large, f"value is {len(value)} bytes, limit is {max_bytes}"
        )
    headers = sum(len(k) + len(v or b"") for k, v in rec.headers)
    if len(value) + headers > max_bytes:
        raise Rejected(
            DeadLetterReason.too_large,
            f"value and headers are {len(value) + headers} bytes, limit is {max_bytes}",
        )
    text = _text(value, "value")
    try:
        # Refused here: NaN and Infinity (not JSON; the fast path's contract takes them in
        # properties), nesting past 200 levels, numbers no machine number holds.
        data = from_json(text, allow_inf_nan=False)
    except ValueError as e:
        message = str(e)
        if message.startswith("recursion limit exceeded"):
            raise Rejected(DeadLetterReason.nesting_too_deep, f"JSON {message}") from e
        if message.startswith("number out of range"):
            raise Rejected(DeadLetterReason.number_out_of_range, f"JSON {message}") from e
        raise Rejected(DeadLetterReason.malformed_json, f"not JSON: {message}") from e
    if not isinstance(data, dict):
        raise Rejected(
            DeadLetterReason.schema_violation, f"expected a JSON object, got {type(data).__name__}"
        )
    return data


def _from_cloudevent(attrs: Mapping[str, Any], data: Any, key: str | None) -> dict[str, Any]:
    """Map CloudEvents attributes onto JourneyEvent fields (CloudEvents wins where both)."""
    if not isinstance(data, dict):
        raise Rejected(DeadLetterReason.schema_violation, "CloudEvent data must be a JSON object")
    out = dict(data)
    for ce, ours in (
        ("id", "event_id"),
        ("type", "type"),
        ("time", "occurred_at"),
        ("source", "source"),
    ):
        if attrs.get(ce) is not None:
            out[ours] = attrs[ce]
    if "customer_id" not in out:
        cid = attrs.get("subject") or attrs.get("partitionkey") or key
        if cid is not None:
            out["customer_id"] = cid
    return out


def _specversion(spec: Any, where: str) -> None:
    if spec != CLOUDEVENTS_VERSION:
        raise Rejected(
            DeadLetterReason.schema_violation,
            f"{where}: only CloudEvents {CLOUDEVENTS_VERSION} is supported, got {str(spec)[:32]!r}",
        )


def _key_text(rec: RawRecord) -> str | None:
    return _text(rec.key, "key") if rec.key else None


def _fields(rec: RawRecord, settings: DecodeSettings) -> dict[str, Any]:
    ct = _content_type(rec.headers)
    spec = _header(rec.headers, "ce_specversion")
    if spec is not None:  # binary mode: attributes in headers, the value is the data
        _specversion(spec, "ce_specversion")
        if ct is not None and not _is_json_type(ct):
            raise Rejected(
                DeadLetterReason.unsupported_content_type,
                f"content-type {ct!r}: only JSON data is supported",
            )
        attrs = {
            k[3:].lower(): (_text(v, f"header {k!r}") if v is not None else None)
            for k, v in rec.headers
            if k.lower().startswith("ce_")
        }
        return _from_cloudevent(attrs, _json_object(rec, settings.max_bytes), _key_text(rec))
    if ct is not None and ct != CLOUDEVENTS_JSON and not _is_json_type(ct):
        raise Rejected(
            DeadLetterReason.unsupported_content_type,
            f"content-type {ct!r}: expected application/json or {CLOUDEVENTS_JSON}",
        )
    data = _json_object(rec, settings.max_bytes)
    if ct == CLOUDEVENTS_JSON or "specversion" in data:  # structured mode
        _specversion(data.get("specversion"), "specversion")
        return _from_cloudevent(data, data.get("data"), _key_text(rec))
    return data


def _describe(error: ValidationError) -> tuple[DeadLetterReason, str]:
    errors = error.errors()
    parts = [f"{'.'.join(str(p) for p in e['loc']) or '(root)'}: {e['msg']}" for e in errors]
    reason = (
        DeadLetterReason.invalid_customer_id
        if any(e["loc"][:1] == ("customer_id",) for e in errors)
        else DeadLetterReason.schema_violation
    )
    return reason, "; ".join(parts)


def decode_contract(rec: RawRecord, contract: type[_M]) -> _M:
    """A record of one of Forewarn's own contracts (a decision, an outcome, a milestone),
    or ``Rejected`` with the dead-letter reason.

    >>> from forewarn.models.contracts import Outcome
    >>> decode_contract(RawRecord("t", 0, 0, None, b"{"), Outcome)
    Traceback (most recent call last):
    forewarn.pipeline.codecs.Rejected: ...
    """
    if rec.value is None:
        raise Rejected(DeadLetterReason.schema_violation, "the record has no value")
    try:
        return contract.model_validate_json(rec.value)
    except ValidationError as e:
        if any(err["type"] == "json_invalid" for err in e.errors()):
            raise Rejected(DeadLetterReason.malformed_json, str(e.errors()[0]["msg"])) from e
        raise Rejected(*_describe(e)) from e


def _fast_path(rec: RawRecord, settings: DecodeSettings) -> EventFields | None:
    """Plain JSON without CloudEvents headers, read straight from bytes by the plain reader
    (``plain_events``), or where it is not sure, by the contract. Anything unusual or invalid
    returns None and takes the general path, which says precisely what is wrong."""
    value = rec.value
    if not value or len(value) > settings.max_bytes:
        return None
    if rec.headers:
        if len(value) + sum(len(k) + len(v or b"") for k, v in rec.headers) > settings.max_bytes:
            return None
        if _header(rec.headers, "ce_specversion") is not None:
            return None
        ct = _content_type(rec.headers)
        if ct is not None and ct not in _JSON_TYPES:
            return None
    event = read_plain_event(value, settings.aliases)
    if event is not None:
        return event
    try:  # what the reader leaves, the contract validates straight from bytes, as it did
        return JourneyEvent.model_validate_json(value, context=settings.validation_context)
    except ValidationError:
        return None


def decode_event(
    rec: RawRecord, settings: DecodeSettings, now: datetime
) -> DecodedEvent | DeadLetter:
    """One raw record to a validated event, or a dead letter saying why not."""
    try:
        event: EventFields | None = _fast_path(rec, settings)
        if event is None:
            data = _fields(rec, settings)
            try:
                event = JourneyEvent.model_validate(data, context=settings.validation_context)
            except ValidationError as e:
                raise Rejected(*_describe(e)) from e
        if event.occurred_at > now + settings.future_tolerance:
            raise Rejected(
                DeadLetterReason.future_timestamp,
                f"occurred_at {event.occurred_at.isoformat()} is more than "
                f"{settings.future_tolerance} ahead of {now.isoformat()}",
            )
        if (
            settings.strict_types
            and event.type not in VOCABULARY
            and event.type not in settings.custom_types
        ):
            raise Rejected(
                DeadLetterReason.unknown_event_type,
                f"type {event.type!r} is not in the vocabulary; map it with an alias",
            )
    except Rejected as r:
        return dead_letter(rec, r.reason, r.detail, now, settings.dead_letter_keep_bytes)
    if rec.key is None:
        status: KeyStatus = "missing"
    elif rec.key != event.customer_id.encode("utf-8"):
        status = "mismatch"
    else:
        status = "ok"
    return DecodedEvent(event, status)


@dataclass(frozen=True, slots=True)
class PartialProfile:
    """A profile applied without a field it could not use; ``ignored`` says which and why."""

    profile: CustomerProfile
    ignored: DeadLetter


def decode_profile(
    rec: RawRecord, now: datetime, keep_bytes: int = DEAD_LETTER_KEEP_BYTES
) -> CustomerProfile | PartialProfile | ProfileTombstone | DeadLetter:
    """A compacted-topic profile record; a null value deletes the profile of its key.

    An unusable time zone does not cost the customer the rest of the profile (its consent
    and do-not-contact above all): the profile is kept without it, the customer counts as
    being in UTC, and a ``field_ignored`` dead letter says so.
    """
    try:
        if rec.value is None:
            if not rec.key:
                raise Rejected(DeadLetterReason.schema_violation, "tombstone without key")
            cid = _text(rec.key, "key")
            # The key names a customer as their profile does (stripped, at most 128
            # characters); anything else is no customer's, and a key with a leading space
            # would name a partition record (the volume thresholds).
            if cid != cid.strip() or not cid or len(cid) > 128:
                raise Rejected(
                    DeadLetterReason.schema_violation,
                    "tombstone key: not a customer id (empty, padded or too long)",
                )
            return ProfileTombstone(cid)
        data = _json_object(rec, MAX_PROFILE_BYTES)
        try:
            return CustomerProfile.model_validate(data)
        except ValidationError as e:
            if not all(err["loc"][:1] == ("timezone",) for err in e.errors()):
                raise Rejected(*_describe(e)) from e
            try:
                kept = CustomerProfile.model_validate({**data, "timezone": "UTC"})
            except ValidationError as e2:
                raise Rejected(*_describe(e2)) from e2
            _, detail = _describe(e)
            why = f"{detail} (profile applied without it: quiet hours in UTC)"
            return PartialProfile(
                kept, dead_letter(rec, DeadLetterReason.field_ignored, why, now, keep_bytes)
            )
    except Rejected as r:
        return dead_letter(rec, r.reason, r.detail, now, keep_bytes)


def encode(model: Any) -> bytes:
    """The JSON bytes of a contract, as published."""
    data: bytes = model.__pydantic_serializer__.to_json(model)
    return data
