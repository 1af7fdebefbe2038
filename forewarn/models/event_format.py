"""How actions and decisions are framed on Kafka (``FOREWARN_ACTIONS_FORMAT``).

``json`` (the default): the contract's JSON as the value, no headers. ``cloudevents``: the
CloudEvents Kafka protocol binding, binary content mode, the same binding the decoder accepts
on input. The value stays the contract's JSON (the event's ``data``); its attributes are
``ce_*`` headers, and ``content-type`` is the data's content type.

>>> from datetime import UTC, datetime
>>> dict(cloudevent_headers("action", "a1", "c1", datetime(2026, 1, 1, tzinfo=UTC)))["ce_type"]
b'dev.forewarn.action.v1'
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

ActionsFormat = Literal["json", "cloudevents"]
#: the ``ce_source`` of everything the scoring workers publish
SOURCE = "urn:forewarn:scoring"
#: ``ce_type`` by record kind; ``.v1``: the contract's version (a v2 gets its own type)
TYPES = {"action": "dev.forewarn.action.v1", "decision": "dev.forewarn.decision.v1"}
_SCHEMAS = {"action": "outreach-action.v1.json", "decision": "decision.v1.json"}


def cloudevent_headers(
    kind: Literal["action", "decision"], record_id: str, customer_id: str, at: datetime
) -> list[tuple[str, bytes]]:
    """The binary-mode headers of one action or decision: ``ce_id`` is its deterministic id
    (a consumer deduplicates on it), ``ce_time`` when it was decided, ``ce_subject`` the
    customer, ``ce_dataschema`` its JSON Schema."""
    if at.tzinfo is None:
        raise ValueError("at must be timezone-aware")
    return [
        ("ce_specversion", b"1.0"),
        ("ce_id", record_id.encode()),
        ("ce_source", SOURCE.encode()),
        ("ce_type", TYPES[kind].encode()),
        ("ce_time", at.isoformat().encode()),
        ("ce_subject", customer_id.encode()),
        ("ce_dataschema", f"https://forewarn.dev/schemas/{_SCHEMAS[kind]}".encode()),
        ("content-type", b"application/json"),
    ]
