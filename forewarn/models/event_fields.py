"""What scoring reads of a journey event.

The ``JourneyEvent`` contract has these fields, and so does ``pipeline.plain_events.
PlainEvent``, the same event read straight from a record's bytes (about four times cheaper
than validating the contract, for the records that are plain JSON: issue 14). Everything
downstream of decoding (the fold, the rules, the learner's rows) reads an event through this
protocol, so it takes either.

>>> from datetime import UTC, datetime
>>> from forewarn.models.contracts import JourneyEvent
>>> def kind(e: EventFields) -> str:
...     return e.type
>>> kind(JourneyEvent(event_id="e1", customer_id="c1", type="purchase",
...                   occurred_at=datetime(2026, 1, 1, tzinfo=UTC)))
'purchase'
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Protocol

from forewarn.models.contracts import EventChannel


class EventFields(Protocol):
    """A journey event's fields, read-only (``JourneyEvent`` documents each)."""

    @property
    def event_id(self) -> str: ...
    @property
    def customer_id(self) -> str: ...
    @property
    def type(self) -> str: ...
    @property
    def occurred_at(self) -> datetime: ...
    @property
    def source(self) -> str | None: ...
    @property
    def channel(self) -> EventChannel | None: ...
    @property
    def session_id(self) -> str | None: ...
    @property
    def value(self) -> float | None: ...
    @property
    def properties(self) -> dict[str, Any]: ...
