"""Records as upstream systems send them: CloudEvents in both Kafka modes, and a malformed
sample for every dead-letter reason the simulator can produce on purpose.

Pure: the simulator publishes them live (``forewarn simulate --bad-rate``), the tests and the
bench feed them to the decoder and the worker.

>>> from datetime import UTC, datetime
>>> key, value, headers = bad_record(DeadLetterReason.malformed_json, datetime.now(UTC))
>>> value
b'{"event_id": "half a record", '
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta

from forewarn.models.contracts import DeadLetterReason, JourneyEvent
from forewarn.pipeline.codecs import CLOUDEVENTS_JSON, Headers

Record = tuple[bytes | None, bytes | None, Headers]


def as_cloudevent_binary(e: JourneyEvent) -> Record:
    """CloudEvents Kafka binding, binary mode: attributes in ``ce_*`` headers."""
    data = e.model_dump(mode="json", exclude={"event_id", "type", "occurred_at", "source"})
    headers: Headers = (
        ("ce_specversion", b"1.0"),
        ("ce_id", e.event_id.encode()),
        ("ce_type", e.type.encode()),
        ("ce_source", (e.source or "unknown").encode()),
        ("ce_time", e.occurred_at.isoformat().encode()),
        ("content-type", b"application/json"),
    )
    return e.customer_id.encode(), json.dumps(data).encode(), headers


def as_cloudevent_structured(e: JourneyEvent) -> Record:
    """CloudEvents Kafka binding, structured mode: one JSON envelope."""
    data = e.model_dump(mode="json", exclude={"event_id", "type", "occurred_at", "source"})
    envelope = {
        "specversion": "1.0",
        "id": e.event_id,
        "type": e.type,
        "source": e.source or "unknown",
        "time": e.occurred_at.isoformat(),
        "datacontenttype": "application/json",
        "data": data,
    }
    headers: Headers = (("content-type", CLOUDEVENTS_JSON.encode()),)
    return e.customer_id.encode(), json.dumps(envelope).encode(), headers


def bad_record(kind: DeadLetterReason, now: datetime, n: int = 0) -> Record:
    """One malformed record that Forewarn must dead-letter with reason ``kind``."""
    at = now.isoformat()
    good = {
        "event_id": f"bad-{kind.value}-{n}",
        "customer_id": f"bad-cust-{n}",
        "type": "page_view",
        "occurred_at": at,
    }
    key = good["customer_id"].encode()
    if kind is DeadLetterReason.not_utf8:
        return key, b'{"event_id": "\xff\xfe\xfd"}', ()
    if kind is DeadLetterReason.malformed_json:
        return key, b'{"event_id": "half a record", ', ()
    if kind is DeadLetterReason.schema_violation:
        return key, json.dumps({**good, "occurred_at": "yesterday-ish"}).encode(), ()
    if kind is DeadLetterReason.invalid_customer_id:
        return b"", json.dumps({**good, "customer_id": ""}).encode(), ()
    if kind is DeadLetterReason.too_large:
        return key, json.dumps({**good, "properties": {"blob": "x" * 70_000}}).encode(), ()
    if kind is DeadLetterReason.future_timestamp:
        future = (now + timedelta(days=2)).isoformat()
        return key, json.dumps({**good, "occurred_at": future}).encode(), ()
    if kind is DeadLetterReason.unsupported_content_type:
        return key, b"\x00\x01avro-bytes", (("content-type", b"application/avro"),)
    head = json.dumps(good)[:-1].encode()  # the good record, still open for one more field
    if kind is DeadLetterReason.nesting_too_deep:
        return key, head + b', "properties": {"a": ' + b"[" * 5000 + b"]" * 5000 + b"}}", ()
    if kind is DeadLetterReason.number_out_of_range:
        return key, head + b', "value": ' + b"9" * 5000 + b"}", ()
    raise ValueError(f"no sample for {kind}")


#: the dead-letter reasons the simulator can produce on purpose
BAD_KINDS = (
    DeadLetterReason.not_utf8,
    DeadLetterReason.malformed_json,
    DeadLetterReason.schema_violation,
    DeadLetterReason.invalid_customer_id,
    DeadLetterReason.too_large,
    DeadLetterReason.future_timestamp,
    DeadLetterReason.unsupported_content_type,
    DeadLetterReason.nesting_too_deep,
    DeadLetterReason.number_out_of_range,
)
