"""``forewarn rules test``: test cases for the people who own the rules.

**Test cases** live next to the rulebook (``rules.yaml`` -> ``rules.tests.yaml``), like unit
tests for rules::

    cases:
      - name: a failed payment with other trouble gets a recovery push
        profile: {consent: {push: true}, timezone: Europe/Berlin}
        events:
          - {type: error_page, at: "2026-03-02T12:00:00Z"}
          - {type: payment_failed, at: "2026-03-02T12:01:00Z", properties: {order_id: o1}}
        expect:
          actions: [{rule: payment_recovery, channel: push}]
          suppressed: []

Each case runs through the real engine (the exact streaming path, no broker), with the
shipped churn model unless another is given (``--model none``: friction only).
``actions`` lists every action expected, in order; ``suppressed`` lists every expected
suppression as ``{rule, reason}``, the reason one of the ids decisions carry
(``SuppressionReason``: consent, do_not_contact, quiet_hours, cooldown, frequency_cap,
holdout, duplicate, expired, arbitration); another is refused when the file loads. Omit a
key to leave it unchecked. A failing case prints what was expected and what happened, line
by line.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from forewarn.models.config_file import load_yaml_file
from forewarn.models.contracts import Consent, CustomerProfile, JourneyEvent, SuppressionReason
from forewarn.models.risk import RiskModel
from forewarn.offline.replay import replay
from forewarn.rules.rulebook import Rulebook

CASE_CUSTOMER = "test-customer"


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class CaseEvent(_Strict):
    type: str
    at: AwareDatetime
    properties: dict[str, Any] = Field(default_factory=dict)
    session_id: str | None = "s1"
    value: float | None = None


class CaseProfile(_Strict):
    consent: Consent = Field(default_factory=Consent)
    do_not_contact: bool = False
    timezone: str = "UTC"
    tier: str | None = None


class ExpectedAction(_Strict):
    rule: str
    channel: str | None = None
    not_before: AwareDatetime | None = None


class ExpectedSuppression(_Strict):
    rule: str
    #: one of the suppression reason ids; a misspelt one is refused when the file loads
    reason: SuppressionReason


class Expectation(_Strict):
    actions: list[ExpectedAction] | None = None
    suppressed: list[ExpectedSuppression] | None = None


class Case(_Strict):
    name: str
    profile: CaseProfile | None = Field(default_factory=CaseProfile)
    events: list[CaseEvent] = Field(min_length=1)
    expect: Expectation


class CaseFile(_Strict):
    cases: list[Case] = Field(min_length=1)


def cases_beside(rulebook: Path) -> Path:
    return rulebook.with_name(rulebook.stem + ".tests.yaml")


@dataclass(frozen=True, slots=True)
class CaseResult:
    name: str
    failures: list[str]

    @property
    def ok(self) -> bool:
        return not self.failures


def run_case(book: Rulebook, case: Case, churn: RiskModel | None = None) -> CaseResult:
    events = [
        JourneyEvent(
            event_id=f"case-{i}",
            customer_id=CASE_CUSTOMER,
            type=e.type,
            occurred_at=e.at,
            session_id=e.session_id,
            value=e.value,
            properties=e.properties,
        )
        for i, e in enumerate(case.events)
    ]
    profiles = (
        []
        if case.profile is None
        else [CustomerProfile(customer_id=CASE_CUSTOMER, **case.profile.model_dump())]
    )
    out = replay(events, profiles, rulebook=book, churn=churn, batch_size=1)
    failures: list[str] = []
    if case.expect.actions is not None:
        want = [_action_line(a.rule, a.channel, a.not_before) for a in case.expect.actions]
        got = [
            _action_line(
                a.rule_id,
                a.channel.value if any(x.channel for x in case.expect.actions) else None,
                a.not_before if any(x.not_before for x in case.expect.actions) else None,
            )
            for a in out.actions
        ]
        if got != want:
            failures += _diff("actions", want, got)
    if case.expect.suppressed is not None:
        want_s = sorted(f"{s.rule}: {s.reason.value}" for s in case.expect.suppressed)
        got_s = sorted(
            f"{d.rule_id}: {d.suppressed_by.value}"
            for d in out.decisions
            if d.suppressed_by is not None
        )
        if got_s != want_s:
            failures += _diff("suppressed", want_s, got_s)
    return CaseResult(case.name, failures)


def _action_line(rule: str, channel: str | None, not_before: datetime | None) -> str:
    line = rule + (f" via {channel}" if channel else "")
    return line + (f" not before {not_before.isoformat()}" if not_before else "")


def _diff(what: str, want: list[str], got: list[str]) -> list[str]:
    lines = [f"{what}:"]
    lines += [f"  - expected {w}" for w in want if w not in got] or []
    lines += [f"  + got      {g}" for g in got if g not in want] or []
    if len(lines) == 1:  # same items, other order or count
        lines += [f"  expected {want}", f"  got      {got}"]
    return lines


def run_cases(book: Rulebook, path: Path, churn: RiskModel | None = None) -> list[CaseResult]:
    cases = load_yaml_file(path, CaseFile)
    return [run_case(book, c, churn) for c in cases.cases]
