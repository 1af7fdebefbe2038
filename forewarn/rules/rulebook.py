"""The rulebook: what marketing and CX teams own, as a validated YAML file.

A rule fires on a *trigger* (an event type, a derived session detection such as
``rage_burst``, or the friction score crossing a threshold upward), checks its
*requirements* against the customer's state at that moment, and proposes an *action*
that the policies then let through or suppress.

>>> book = load_rulebook_text('''
... version: "1"
... rules:
...   - id: pay
...     description: help after a failed payment
...     triggers: {events: [payment_failed]}
...     action: {playbook: payment_recovery, channels: [email], template: t, priority: 90}
... ''', "inline.yaml")
>>> [r.id for r in book.rules_for("payment_failed", (), 0.0, 10.0)]
['pay']
"""

from __future__ import annotations

import re
from functools import cached_property
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from forewarn.models.config_file import load_yaml_file, load_yaml_text
from forewarn.models.contracts import VOCABULARY, ActionChannel
from forewarn.models.session import DERIVED_TRIGGERS
from forewarn.models.state import POOR_SURVEY
from forewarn.rules.conditions import check
from forewarn.rules.volume import VolumeTarget

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)\s*$")
_UNIT = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(value: Any) -> float:
    """Seconds from ``"90s"``, ``"15m"``, ``"2h"``, ``"7d"``, ``"1w"`` or a number of seconds.

    >>> parse_duration("2h"), parse_duration(30)
    (7200.0, 30.0)
    """
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str) and (m := _DURATION.match(value)):
        return float(m.group(1)) * _UNIT[m.group(2)]
    raise ValueError(f"expected a duration such as '90s', '15m', '2h' or '7d', got {value!r}")


Duration = Annotated[float, BeforeValidator(parse_duration), Field(ge=0)]

#: what a rule may name as a trigger or count besides the canonical vocabulary
KNOWN_KINDS = VOCABULARY | set(DERIVED_TRIGGERS) | {POOR_SURVEY}


class _Part(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


#: scores a rule can trigger on when they cross a threshold upward
SCORES = ("friction", "churn_risk", "contact_risk")


class Triggers(_Part):
    events: tuple[str, ...] = ()
    #: score name -> threshold; fires when the score crosses it upward with this event
    scores: dict[str, float] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _something(self) -> Triggers:
        if not self.events and not self.scores:
            raise ValueError("a rule needs at least one trigger (events or scores)")
        unknown = set(self.scores) - set(SCORES)
        if unknown:
            raise ValueError(f"unknown score {sorted(unknown)}; available: {list(SCORES)}")
        for risk in ("churn_risk", "contact_risk"):
            if self.scores.get(risk, 0.0) > 1:
                raise ValueError(f"{risk} is a probability: a threshold between 0 and 1")
        return self


class WindowCount(_Part):
    """At least ``at_least`` occurrences of any of ``types`` in the last ``within``."""

    types: tuple[str, ...] = Field(min_length=1)
    within: Duration
    at_least: int = Field(ge=1)


class VolumeRequirement(_Part):
    """Act on the riskiest of the rule's moments by a score, at most
    ``per_1000_active_per_day`` actions per 1,000 active customers per day: the threshold
    follows the traffic (``forewarn/rules/volume.py``)."""

    score: Literal["friction", "churn_risk", "contact_risk"]
    per_1000_active_per_day: float = Field(gt=0)
    #: how long a moment keeps counting (the "recent" in "the top 0.4% of recent moments")
    window: Duration = 24 * 3600.0
    #: nothing is sent before this much stream time has been seen on a partition
    warm_up: Duration = 24 * 3600.0
    #: also held to the target's share of this short a window (scores that shift at once)
    guard: Duration = 3600.0

    def target(self) -> VolumeTarget:
        high = 100.0 if self.score == "friction" else 1.0
        return VolumeTarget(
            per_1000_active_per_day=self.per_1000_active_per_day,
            low=0.0,
            high=high,
            lifetime_seconds=max(self.window, 1.0),
            warm_up_seconds=self.warm_up,
            guard_seconds=max(self.guard, 1.0),
        )


class Requirements(_Part):
    friction_at_least: float = Field(default=0.0, ge=0, le=100)
    #: needs a churn model; without one the rule never fires
    churn_risk_at_least: float | None = Field(default=None, ge=0, le=1)
    #: needs a contact-risk model; without one the rule never fires
    contact_risk_at_least: float | None = Field(default=None, ge=0, le=1)
    counts: tuple[WindowCount, ...] = ()
    #: true: only while the customer is in a checkout; false: only outside one
    in_checkout: bool | None = None
    #: the customer's tier must be one of these (empty: any tier)
    tiers: tuple[str, ...] = ()
    #: skip customers who already contacted support within this time
    no_support_contact_within: Duration | None = None
    #: a volume instead of a fixed threshold: checked after every other requirement
    volume: VolumeRequirement | None = None


class ActionTemplate(_Part):
    playbook: str = Field(min_length=1)
    #: preference order; the first channel the customer consented to is used
    channels: tuple[ActionChannel, ...] = Field(min_length=1)
    template: str = Field(min_length=1)
    priority: int = Field(ge=0, le=100)
    ttl: Duration = 24 * 3600.0
    transactional: bool = False
    #: event properties copied onto the action when present (never free-form PII)
    attributes: tuple[str, ...] = ()


_CLOCK = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")


def parse_clock(value: Any) -> int:
    """Minutes after midnight from ``"21:30"``.

    >>> parse_clock("21:30")
    1290
    """
    if isinstance(value, str) and (m := _CLOCK.match(value.strip())):
        return int(m.group(1)) * 60 + int(m.group(2))
    raise ValueError(f"expected a time of day such as '21:00', got {value!r}")


ClockTime = Annotated[int, BeforeValidator(parse_clock)]


class QuietHours(_Part):
    """No contact between ``start`` and ``end`` in the customer's own time zone."""

    start: ClockTime
    end: ClockTime
    #: defer: send when the quiet hours end (the action's ``not_before``); drop: suppress
    mode: Literal["defer", "drop"] = "defer"

    @model_validator(mode="after")
    def _not_empty(self) -> QuietHours:
        if self.start == self.end:
            raise ValueError("quiet hours need different start and end times")
        return self


class BudgetWindow(_Part):
    within: Duration
    at_most: int = Field(ge=1)


class Policies(_Part):
    cooldown: Duration = 24 * 3600.0
    quiet_hours: QuietHours | None = None
    #: share of customers (a sticky hash of their id) who never get this rule's action
    holdout_percent: float = Field(default=0.0, ge=0, le=100)
    #: decisions are recorded with status ``shadow``; no action is emitted
    shadow: bool = False


class Rule(_Part):
    id: str = Field(pattern=r"^[a-z][a-z0-9_]*$", max_length=64)
    description: str = ""
    triggers: Triggers
    require: Requirements = Field(default_factory=Requirements)
    #: a CEL condition over event, customer and scores (forewarn/rules/conditions.py)
    when: str | None = None
    action: ActionTemplate
    policies: Policies = Field(default_factory=Policies)

    @field_validator("when")
    @classmethod
    def _checked(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is not None:
            try:
                check(v)
            except ValueError as e:
                raise ValueError(f"rule {info.data.get('id', '?')!r}: {e}") from None
        return v

    def uses_score(self, score: str) -> bool:
        """Whether the rule triggers on, requires, ranks by or tests ``score``."""
        req = self.require
        return (
            score in self.triggers.scores
            or (req.volume is not None and req.volume.score == score)
            or (score == "churn_risk" and req.churn_risk_at_least is not None)
            or (score == "contact_risk" and req.contact_risk_at_least is not None)
            or (self.when is not None and score in self.when)
        )


class Rulebook(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    version: str = Field(min_length=1)
    #: event types from upstream systems that rules may name besides the vocabulary
    custom_event_types: tuple[str, ...] = ()
    #: the customer-wide contact budget, across all rules and channels, on rolling
    #: event-time windows; transactional actions are exempt and do not count
    budget: tuple[BudgetWindow, ...] = ()
    #: share of all customers held out of every rule (a sticky hash of their id)
    holdout_percent: float = Field(default=0.0, ge=0, le=100)
    rules: tuple[Rule, ...]

    @model_validator(mode="after")
    def _consistent(self) -> Rulebook:
        ids = [r.id for r in self.rules]
        dupes = sorted({i for i in ids if ids.count(i) > 1})
        if dupes:
            raise ValueError(f"rule ids must be unique; repeated: {dupes}")
        known = KNOWN_KINDS | set(self.custom_event_types)
        for r in self.rules:
            named = set(r.triggers.events)
            for c in r.require.counts:
                named |= set(c.types)
            unknown = sorted(named - known)
            if unknown:
                raise ValueError(
                    f"rule {r.id!r} names unknown event types {unknown}; add them to "
                    "custom_event_types if upstream really sends them"
                )
        return self

    @cached_property
    def uses_contact_risk(self) -> bool:
        """Whether any rule reads the contact risk (only then is it explained)."""
        return any(r.uses_score("contact_risk") for r in self.rules)

    @cached_property
    def by_event(self) -> dict[str, tuple[Rule, ...]]:
        """Trigger index: an event evaluates only the rules that can fire on it."""
        out: dict[str, list[Rule]] = {}
        for r in self.rules:
            for t in r.triggers.events:
                out.setdefault(t, []).append(r)
        return {t: tuple(rs) for t, rs in out.items()}

    @cached_property
    def crossings(self) -> tuple[tuple[str, float, Rule], ...]:
        """(score, threshold, rule) for every score-crossing trigger."""
        return tuple(
            (score, threshold, r)
            for r in self.rules
            for score, threshold in r.triggers.scores.items()
        )

    def rules_for(
        self,
        event_type: str,
        derived: tuple[str, ...],
        prev_friction: float,
        friction: float,
        prev_churn: float | None = None,
        churn: float | None = None,
        prev_contact: float | None = None,
        contact: float | None = None,
    ) -> list[Rule]:
        """The rules this event can fire, each once: event triggers first, then crossings."""
        found: list[Rule] = []
        seen: set[str] = set()  # by id: comparing rules themselves is a deep, slow __eq__
        for kind in (event_type, *derived):
            for r in self.by_event.get(kind, ()):
                if r.id not in seen:
                    seen.add(r.id)
                    found.append(r)
        for score, threshold, r in self.crossings:
            if score == "friction":
                crossed = prev_friction < threshold <= friction
            elif score == "churn_risk":
                crossed = churn is not None and (prev_churn or 0.0) < threshold <= churn
            else:
                crossed = contact is not None and (prev_contact or 0.0) < threshold <= contact
            if crossed and r.id not in seen:
                seen.add(r.id)
                found.append(r)
        return found

    @cached_property
    def volume_targets(self) -> dict[str, VolumeTarget]:
        """Rule id -> its volume target, for the rules that have one."""
        return {r.id: r.require.volume.target() for r in self.rules if r.require.volume}

    @cached_property
    def position(self) -> dict[str, int]:
        """Rule id -> place in the rulebook (the arbitration tie-break)."""
        return {r.id: i for i, r in enumerate(self.rules)}


DEFAULT_RULEBOOK = "default.yaml"


def default_rulebook_path() -> Path:
    """The rulebook shipped with Forewarn (``forewarn/rules/default.yaml``)."""
    return Path(str(resources.files("forewarn.rules").joinpath(DEFAULT_RULEBOOK)))


def load_rulebook(path: Path | None = None) -> Rulebook:
    """Load and validate a rulebook; raises ``ConfigFileError`` naming file, line and field."""
    return load_yaml_file(path or default_rulebook_path(), Rulebook)


def load_rulebook_text(text: str, file: str = "<rulebook>") -> Rulebook:
    return load_yaml_text(text, Rulebook, file)


def with_rule_holdouts(text: str, percent: float) -> str:
    """The rulebook ``text`` with every rule holding out ``percent`` of its customers (its
    own sticky group), so that each rule's experiment compares its own action against
    none; a global holdout compares the whole programme against nothing.

    >>> book = load_rulebook_text(with_rule_holdouts(default_rulebook_path().read_text(), 25))
    >>> {r.policies.holdout_percent for r in book.rules}
    {25.0}
    """
    import yaml

    data = yaml.safe_load(text)
    for rule in data.get("rules", []):
        rule.setdefault("policies", {})["holdout_percent"] = percent
    data["version"] = f"{data.get('version', 'rulebook')}+holdout{percent:g}"
    return str(yaml.safe_dump(data, sort_keys=False))
