"""The wire contracts of design section 4, as pydantic v2 models.

Every record Forewarn reads or writes on Kafka is one of these. Their JSON Schemas are
generated into ``schemas/`` (``forewarn schemas``) and a test fails when they drift.

>>> from datetime import UTC, datetime
>>> e = JourneyEvent(event_id="e1", customer_id="c1", type="payment_failed",
...                  occurred_at=datetime(2026, 1, 1, tzinfo=UTC))
>>> e.channel is None
True
"""

from __future__ import annotations

import json
from enum import StrEnum
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationInfo,
    field_validator,
    model_validator,
)

CustomerId = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=128)]
MAX_PROPERTIES = 64
#: longest text an action copies from an event property into its attributes
MAX_ATTRIBUTE_CHARS = 1024

#: The canonical event vocabulary (design section 4). Types outside it are accepted and
#: counted as ``other`` unless strict mode is on.
VOCABULARY: frozenset[str] = frozenset(
    {
        "page_view",
        "search",
        "search_no_results",
        "product_view",
        "add_to_cart",
        "checkout_started",
        "checkout_error",
        "payment_failed",
        "payment_succeeded",
        "purchase",
        "rage_click",
        "error_page",
        "slow_page",
        "app_crash",
        "login_failed",
        "password_reset",
        "delivery_delayed",
        "order_cancelled",
        "refund_requested",
        "help_center_view",
        "contact_form_opened",
        "support_contact",
        "survey_response",
        "plan_downgraded",
        "subscription_cancel_started",
        "subscription_cancelled",
        "session_start",
    }
)


class EventChannel(StrEnum):
    """Where the customer did something."""

    web = "web"
    app = "app"
    email = "email"
    sms = "sms"
    phone = "phone"
    chat = "chat"
    store = "store"
    other = "other"


class ActionChannel(StrEnum):
    """Where Forewarn reaches out. Each needs the matching consent in the profile."""

    email = "email"
    sms = "sms"
    push = "push"
    in_app = "in_app"
    phone = "phone"  # an agent calls back: a task for the support team


class _Contract(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class JourneyEvent(_Contract):
    """One thing a customer did, as published by an upstream system (v1)."""

    # Upstream systems add their own fields; a tolerant reader keeps working when they do.
    model_config = ConfigDict(frozen=True, extra="ignore")

    event_id: Annotated[str, StringConstraints(min_length=1, max_length=256)]
    customer_id: CustomerId
    type: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    occurred_at: AwareDatetime
    source: str | None = None
    channel: EventChannel | None = None
    session_id: Annotated[str, StringConstraints(max_length=256)] | None = None
    #: e.g. an order amount; NaN and infinities are refused (JSON has no such numbers)
    value: Annotated[float, Field(allow_inf_nan=False)] | None = None
    properties: dict[str, Any] = Field(default_factory=dict)

    @field_validator("type", mode="before")
    @classmethod
    def _alias(cls, v: Any, info: ValidationInfo) -> Any:
        """Map an upstream event name to the vocabulary (aliases come as context)."""
        aliases = info.context.get("aliases") if info.context else None
        return aliases.get(v, v) if aliases and isinstance(v, str) else v

    @field_validator("properties")
    @classmethod
    def _bounded(cls, v: dict[str, Any]) -> dict[str, Any]:
        # Bytes are bounded by the decoder's record size limit; keys are bounded here.
        if len(v) > MAX_PROPERTIES:
            raise ValueError(f"at most {MAX_PROPERTIES} properties, got {len(v)}")
        return v


class Consent(_Contract):
    """Per-channel permission to contact. Absent means no."""

    email: bool = False
    sms: bool = False
    push: bool = False
    in_app: bool = False
    phone: bool = False

    def allows(self, channel: ActionChannel) -> bool:
        return bool(getattr(self, channel.value))


ALL_CONSENT = Consent(email=True, sms=True, push=True, in_app=True, phone=True)


@lru_cache(maxsize=4096)
def usable_time_zone(name: str) -> bool:
    """Whether ``name`` is an IANA time zone this machine can load.

    >>> usable_time_zone("Europe/Berlin"), usable_time_zone("America"), usable_time_zone("x" * 300)
    (True, False, False)
    """
    try:
        ZoneInfo(name)
    except Exception:  # ZoneInfoNotFoundError, ValueError, IsADirectoryError, name too long
        return False
    return True


#: an IANA time zone name that loads (checked when a profile is decoded)
TimeZoneName = Annotated[str, StringConstraints(min_length=1, max_length=64)]


class CustomerProfile(_Contract):
    """What the CRM/CDP knows about a customer (v1). A tombstone deletes it.

    Every text field is bounded, so a customer's state (which holds the profile) always
    fits in one Kafka record.
    """

    model_config = ConfigDict(frozen=True, extra="ignore")

    customer_id: CustomerId
    consent: Consent = Field(default_factory=Consent)
    do_not_contact: bool = False
    timezone: TimeZoneName = "UTC"
    preferred_channel: ActionChannel | None = None
    locale: Annotated[str, StringConstraints(max_length=64)] | None = None
    tier: Annotated[str, StringConstraints(max_length=64)] | None = None
    signed_up_at: AwareDatetime | None = None

    @field_validator("timezone")
    @classmethod
    def _usable(cls, v: str) -> str:
        if not usable_time_zone(v):
            raise ValueError(f"unknown time zone {v!r}: expected an IANA name, e.g. Europe/Berlin")
        return v


class Reason(_Contract):
    """Why an action was taken, in words a marketer reads."""

    signal: str
    contribution: float = Field(
        description="points of the friction score this signal adds; for a churn_risk or "
        "contact_risk reason, the log-odds of churn or of a support contact it adds"
    )
    detail: str


class Scores(_Contract):
    friction: float = Field(ge=0, le=100)
    churn_risk: float | None = Field(default=None, ge=0, le=1)
    #: the chance of a support contact within the contact-risk model's horizon
    contact_risk: float | None = Field(default=None, ge=0, le=1)


AttributeValue = str | int | float | bool


class OutreachAction(_Contract):
    """An instruction to a marketing or support tool to reach out (v1).

    ``action_id`` is deterministic: the same rule on the same trigger event for the same
    customer always yields the same id, so any consumer can deduplicate.
    """

    schema_version: Literal[1] = 1
    action_id: str
    customer_id: CustomerId
    rule_id: str
    playbook: str
    channel: ActionChannel
    priority: int = Field(ge=0, le=100)
    template: str
    reasons: list[Reason]
    scores: Scores
    trigger_event_id: str
    triggered_at: AwareDatetime
    decided_at: AwareDatetime
    not_before: AwareDatetime | None = None
    expires_at: AwareDatetime
    transactional: bool = False
    rulebook_version: str
    model_version: str
    #: the contact-risk model that scored the trigger (None: none loaded); a stream-learned
    #: model names its version here from the stream time it serves from
    contact_model_version: str | None = None
    attributes: dict[str, AttributeValue] = Field(default_factory=dict)


class DecisionStatus(StrEnum):
    emitted = "emitted"
    suppressed = "suppressed"
    shadow = "shadow"


class SuppressionReason(StrEnum):
    consent = "consent"
    do_not_contact = "do_not_contact"
    quiet_hours = "quiet_hours"
    cooldown = "cooldown"
    frequency_cap = "frequency_cap"
    holdout = "holdout"
    duplicate = "duplicate"
    expired = "expired"
    arbitration = "arbitration"


class Decision(_Contract):
    """Every rule that fired, whether its action went out or not (v1).

    A suppressed decision always says which policy stopped it.
    """

    schema_version: Literal[1] = 1
    decision_id: str
    customer_id: CustomerId
    rule_id: str
    status: DecisionStatus
    suppressed_by: SuppressionReason | None = None
    detail: str | None = None
    action: OutreachAction
    at: AwareDatetime
    #: the experiment arm this decision assigns the customer to: every decision of a live
    #: rule that reached the holdout check is ``treated`` or ``holdout`` (intention to treat:
    #: a treated decision stopped later by a cooldown or the budget stays treated); None for
    #: shadow rules and for decisions stopped before the check (consent, expiry)
    arm: Literal["treated", "holdout"] | None = None

    @model_validator(mode="after")
    def _reason_iff_suppressed(self) -> Decision:
        if (self.status is DecisionStatus.suppressed) != (self.suppressed_by is not None):
            raise ValueError("suppressed_by is required exactly when status is 'suppressed'")
        return self


class DeadLetterReason(StrEnum):
    not_utf8 = "not_utf8"
    malformed_json = "malformed_json"
    #: JSON nested deeper than the parser allows (200 levels)
    nesting_too_deep = "nesting_too_deep"
    #: a number JSON allows but no machine number holds (e.g. an integer of 5,000 digits)
    number_out_of_range = "number_out_of_range"
    schema_violation = "schema_violation"
    invalid_customer_id = "invalid_customer_id"
    too_large = "too_large"
    future_timestamp = "future_timestamp"
    unsupported_content_type = "unsupported_content_type"
    unknown_event_type = "unknown_event_type"
    #: the record was applied without one field, which ``error_detail`` names (a profile's
    #: unusable time zone: the customer counts as being in UTC)
    field_ignored = "field_ignored"
    processing_error = "processing_error"
    #: an outcome whose action no decision named (within the feedback plane's grace)
    unknown_action = "unknown_action"
    #: an outcome dated before the event that triggered its action
    outcome_before_action = "outcome_before_action"
    #: an outcome whose customer is not its action's customer
    customer_mismatch = "customer_mismatch"
    #: ``forewarn deliver``: the destination refused the action for good (a 4xx other than
    #: 408 and 429); ``delivery`` holds its last answer
    delivery_rejected = "delivery_rejected"
    #: ``forewarn deliver``: every attempt failed (5xx, timeouts, connection errors)
    delivery_exhausted = "delivery_exhausted"
    #: ``forewarn deliver``: the destination's body template cannot render the action
    delivery_unrenderable = "delivery_unrenderable"


class Header(_Contract):
    key: str
    value_base64: str | None


class Truncation(_Contract):
    """A part of the original record cut to keep the dead letter within Kafka's limits."""

    #: ``key``, ``value``, ``header:<name>`` or ``headers`` (headers beyond the count kept)
    part: str
    original_bytes: int
    kept_bytes: int
    #: SHA-256 (hex) of the part's original bytes in full, to match it with the source
    sha256: str


class DeliveryFailure(_Contract):
    """What ``forewarn deliver`` saw last when it gave an action up (in its dead letter)."""

    destination: str
    attempts: int = Field(ge=0)
    #: the last HTTP status; None when nothing answered (timeout, connection refused)
    status: int | None = None
    #: the last error (``timeout``, ``connection refused: ...``) when nothing answered
    error: str | None = Field(default=None, max_length=1024)
    #: the start of the last response's body
    response_body: str | None = Field(default=None, max_length=4096)


class DeadLetter(_Contract):
    """A record Forewarn could not use, with the original bytes and why (v1).

    The original bytes are kept up to a bound (``FOREWARN_DEAD_LETTER_KEEP_BYTES``) so that a
    dead letter always fits in a Kafka record; what was cut is listed in ``truncated``.
    """

    schema_version: Literal[1] = 1
    source_topic: str
    partition: int
    offset: int
    key_base64: str | None
    value_base64: str | None
    headers: list[Header] = Field(default_factory=list)
    error_type: DeadLetterReason
    error_detail: str
    failed_at: AwareDatetime
    #: size of the original record (key, value and headers) in bytes
    original_bytes: int | None = None
    truncated: list[Truncation] = Field(default_factory=list)
    #: set by ``forewarn deliver``: the destination and its last answer
    delivery: DeliveryFailure | None = None


#: the journey events that outcomes are measured by, published to the milestones topic
MILESTONE_TYPES: frozenset[str] = frozenset(
    {"support_contact", "subscription_cancelled", "purchase"}
)


class Milestone(_Contract):
    """A journey event that outcomes are measured by (a support contact, a cancellation, a
    purchase), published by the scoring worker inside its transaction to the low-volume
    milestones topic, keyed by customer: the learner and the feedback plane read it, never
    the high-volume journey stream."""

    schema_version: Literal[1] = 1
    event_id: str
    customer_id: CustomerId
    type: str
    occurred_at: AwareDatetime


class FeatureRow(_Contract):
    """The contact-risk features at one moment, a sample of them, for the stream learner.

    ``weight``: how many moments of the stream this row stands for (1 / the share sampled),
    so that what is learned from the sample is what the whole stream would teach.
    """

    schema_version: Literal[1] = 1
    event_id: str
    customer_id: CustomerId
    occurred_at: AwareDatetime
    weight: float = Field(gt=0, allow_inf_nan=False)
    #: names the features and their order (``features.CONTACT_FEATURE_SET``): a learner
    #: ignores rows of another feature set
    feature_set: str
    features: list[Annotated[float, Field(allow_inf_nan=False)]] = Field(max_length=256)


class OutcomeKind(StrEnum):
    """What became of an action, as the tool that sent it reports it."""

    delivered = "delivered"
    opened = "opened"
    clicked = "clicked"
    converted = "converted"
    bounced = "bounced"
    unsubscribed = "unsubscribed"
    complained = "complained"
    #: the sender gave up on it (``forewarn deliver``: failed for good)
    failed = "failed"
    #: it was never sent: its ``expires_at`` passed first
    expired = "expired"


class Outcome(_Contract):
    """What a marketing or support tool reports back about one action (v1), keyed by
    customer on ``outreach-outcomes``.

    The feedback plane counts each ``(action_id, kind)`` once, however often it is sent.
    """

    schema_version: Literal[1] = 1
    action_id: str = Field(min_length=1, max_length=256)
    customer_id: CustomerId
    kind: OutcomeKind
    at: AwareDatetime
    #: the tool that reports it (for example ``crm-webhook``)
    source: str | None = Field(default=None, max_length=128)
    detail: str | None = Field(default=None, max_length=1024)


class HeldDelivery(_Contract):
    """An action ``forewarn deliver`` holds for one destination: deferred until its
    ``not_before``, waiting for a retry, or for a paused destination (v1).

    Written to the compacted held-deliveries topic (key ``destination/action_id``, the
    partition of the action's own record) in the transaction that commits the action's
    offset; a tombstone in a later transaction settles it. A restarted deliverer reads the
    partition back before it reads actions: nothing held is lost or sent twice.
    """

    schema_version: Literal[1] = 1
    destination: str
    action: OutreachAction
    #: when it may be attempted next
    due_at: AwareDatetime
    #: attempts made so far
    attempts: int = Field(default=0, ge=0)
    reason: Literal["not_before", "retry", "paused"]
    #: where the action was read (for its dead letter if it fails for good)
    source_partition: int = Field(ge=0)
    source_offset: int = Field(ge=0)
    last_status: int | None = None
    last_error: str | None = Field(default=None, max_length=1024)


#: File name in ``schemas/`` for each exported contract.
SCHEMA_FILES: dict[str, type[BaseModel]] = {
    "journey-event.v1.json": JourneyEvent,
    "customer-profile.v1.json": CustomerProfile,
    "outreach-action.v1.json": OutreachAction,
    "decision.v1.json": Decision,
    "dead-letter.v1.json": DeadLetter,
    "milestone.v1.json": Milestone,
    "feature-row.v1.json": FeatureRow,
    "outcome.v1.json": Outcome,
    "held-delivery.v1.json": HeldDelivery,
}


def json_schemas() -> dict[str, str]:
    """The JSON Schema text of every contract, keyed by file name."""
    # The model release holds a model card, which is defined with the models (that import
    # this module): added here, not in SCHEMA_FILES.
    from forewarn.models.releases import ModelRelease

    out: dict[str, str] = {}
    every: dict[str, type[BaseModel]] = {**SCHEMA_FILES, "model-release.v1.json": ModelRelease}
    for name, model in every.items():
        schema = model.model_json_schema(mode="serialization")
        schema["$id"] = f"https://forewarn.dev/schemas/{name}"
        schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
        out[name] = json.dumps(schema, indent=2, sort_keys=True) + "\n"
    return out


def write_json_schemas(directory: Path) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in json_schemas().items():
        path = directory / name
        path.write_text(text)
        written.append(path)
    return written
