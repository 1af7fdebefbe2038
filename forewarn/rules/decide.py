"""From scored events to decisions: requirements, reasons, policies, arbitration.

Policies run in this order, and the first that says no is recorded as the decision's
``suppressed_by``:

1. ``do_not_contact`` - the profile forbids any contact;
2. ``consent`` - none of the rule's channels is consented to (no profile: no consent);
3. ``expired`` - the trigger is older than the action's time-to-live, measured against the
   partition's stream time (a late or backlogged event: too late to act on);
4. ``duplicate`` - this exact action (same deterministic id) was already emitted;
5. ``cooldown`` - the rule reached this customer too recently;
6. ``frequency_cap`` - the customer-wide contact budget is spent in one of its rolling
   event-time windows around the moment the action would reach the customer (the end of
   its quiet hours when deferred); transactional actions are exempt and not charged;
7. ``quiet_hours`` - the trigger falls in the rule's quiet hours in the customer's time
   zone and the rule drops (a deferring rule emits with ``not_before`` instead);
8. ``holdout`` - the customer is in the global or the rule's holdout group (sticky hash);
9. ``arbitration`` - another rule fired on the same trigger event and won (highest
   priority first, then rulebook order).

A rule in **shadow mode** goes through the same policies; what would have been emitted is
recorded with status ``shadow`` and nothing is sent, charged or remembered.

Every rule whose requirements hold yields exactly one Decision: emitted, or suppressed with
its reason. A rule whose requirements do not hold yields nothing: it did not fire.

Each trigger is settled before the next event of the customer is looked at, and an emitted
action is remembered on the customer's state at once. So decisions depend only on the
customer's own events in event order, never on where batch boundaries fall: a worker that
crashed and replayed decides exactly what an uninterrupted one did (docs/decisions.md §9).
"""

from __future__ import annotations

import hashlib
import math
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
from google.protobuf.struct_pb2 import Struct
from numpy.typing import NDArray

from forewarn.models.contracts import (
    MAX_ATTRIBUTE_CHARS,
    ActionChannel,
    AttributeValue,
    Decision,
    DecisionStatus,
    JourneyEvent,
    OutreachAction,
    Reason,
    Scores,
    SuppressionReason,
)
from forewarn.models.friction import FrictionConfig
from forewarn.models.state import CustomerState
from forewarn.rules.conditions import evaluate, message_class
from forewarn.rules.rulebook import QuietHours, Rule, Rulebook

_IDS = uuid.UUID("6f1c2a9e-3b1d-4f7a-9d0e-6a4b8f2c1e55")


def action_id(rule_id: str, customer_id: str, trigger_event_id: str) -> str:
    """Deterministic: the same rule on the same trigger for the same customer, the same id."""
    return str(uuid.uuid5(_IDS, f"{rule_id}\x1f{customer_id}\x1f{trigger_event_id}"))


def decision_id(action: str) -> str:
    return str(uuid.uuid5(_IDS, f"decision\x1f{action}"))


@dataclass(frozen=True, slots=True)
class Moment:
    """One scored event, as the rules see it."""

    event: JourneyEvent
    at: float
    state: CustomerState
    derived: tuple[str, ...]
    in_checkout: bool
    friction: float
    prev_friction: float
    #: points each friction signal adds to the score (one row of the batch matrix)
    contributions: Sequence[float] | NDArray[np.float64]
    #: churn risk 0-1 after this event, and before it (None: no churn model loaded)
    churn: float | None = None
    prev_churn: float | None = None
    #: what raises the churn risk most, as (words, log-odds), largest first
    churn_reasons: tuple[tuple[str, float], ...] = ()
    #: the partition's stream time when the event was processed (None: the event's own)
    stream_time: float | None = None


def condition_data(m: Moment) -> dict[str, Any]:
    """What a rule's CEL ``when`` sees of this moment (built once per moment)."""
    e, state, profile = m.event, m.state, m.state.profile
    props = Struct()
    props.update(e.properties)
    last = state.last_support_contact
    counts: dict[str, dict[str, int]] = {"counts_24h": {}, "counts_7d": {}}
    for kind, times in state.occurrences.items():
        for key, window in (("counts_24h", 86400.0), ("counts_7d", 7 * 86400.0)):
            n = sum(1 for t in times if m.at - window < t <= m.at)
            if n:
                counts[key][kind] = n
    return {
        "event": message_class("Event")(
            type=e.type,
            customer_id=e.customer_id,
            channel=e.channel.value if e.channel else "",
            session_id=e.session_id or "",
            value=e.value or 0.0,
            properties=props,
        ),
        "customer": message_class("Customer")(
            tier=(profile.tier or "") if profile else "",
            timezone=profile.timezone if profile else "",
            locale=(profile.locale or "") if profile else "",
            preferred_channel=(
                profile.preferred_channel.value if profile and profile.preferred_channel else ""
            ),
            do_not_contact=bool(profile and profile.do_not_contact),
            has_profile=profile is not None,
            in_checkout=m.in_checkout,
            events_seen=state.events_seen,
            hours_since_support_contact=-1.0 if last is None else max(0.0, m.at - last) / 3600,
            **counts,
        ),
        "scores": message_class("Scores")(
            friction=m.friction,
            friction_before=m.prev_friction,
            churn_risk=-1.0 if m.churn is None else m.churn,
            churn_risk_before=-1.0 if m.prev_churn is None else m.prev_churn,
        ),
    }


def requirements_met(rule: Rule, m: Moment, data: dict[str, Any] | None = None) -> bool:
    """The rule's structured requirements, then its CEL condition (``data``: its inputs)."""
    if not _structured(rule, m):
        return False
    if rule.when is None:
        return True
    return evaluate(rule.when, data if data is not None else condition_data(m))


def _structured(rule: Rule, m: Moment) -> bool:
    req = rule.require
    if m.friction < req.friction_at_least:
        return False
    if req.churn_risk_at_least is not None and (
        m.churn is None or m.churn < req.churn_risk_at_least
    ):
        return False
    if req.in_checkout is not None and req.in_checkout != m.in_checkout:
        return False
    if req.tiers:
        profile = m.state.profile
        if profile is None or profile.tier not in req.tiers:
            return False
    if req.no_support_contact_within is not None and m.state.window_count(
        ("support_contact",), req.no_support_contact_within, m.at
    ):
        return False
    return all(m.state.window_count(c.types, c.within, m.at) >= c.at_least for c in req.counts)


def _words(kind: str) -> str:
    return kind.replace("_", " ")


def _ago(seconds: float) -> str:
    hours = seconds / 3600
    return f"{hours:g} h" if hours < 48 else f"{hours / 24:g} days"


def explain(rule: Rule, m: Moment, config: FrictionConfig) -> list[Reason]:
    """Why: the trigger, then the signals that add most to the friction score."""
    hits = [k for k in (m.event.type, *m.derived) if k in rule.triggers.events]
    churn_at = rule.triggers.scores.get("churn_risk")
    if hits:
        what = f"triggered by {_words(hits[0])}"
    elif (
        churn_at is not None and m.churn is not None and (m.prev_churn or 0.0) < churn_at <= m.churn
    ):
        what = f"churn risk rose from {m.prev_churn or 0.0:.1%} to {m.churn:.1%}"
    else:  # a friction crossing
        what = f"friction rose from {m.prev_friction:.0f} to {m.friction:.0f}"
    reasons = [Reason(signal="trigger", contribution=0.0, detail=what)]
    ranked = sorted(range(len(m.contributions)), key=lambda i: -float(m.contributions[i]))
    window = config.reason_window_seconds
    for i in ranked[: config.top_reasons]:
        points = float(m.contributions[i])
        if points < 0.5:
            break
        sig = config.signals[i]
        n = m.state.window_count(sig.counted, window, m.at)
        detail = f"{sig.label}: {n} in the last {_ago(window)}" if n else f"{sig.label} earlier on"
        reasons.append(Reason(signal=sig.name, contribution=round(points, 1), detail=detail))
    for words, log_odds in m.churn_reasons:
        reasons.append(
            Reason(
                signal="churn_risk",
                contribution=round(log_odds, 2),
                detail=f"churn risk raised: {words} ({log_odds:+.2f} log-odds)",
            )
        )
    return reasons


def choose_channel(rule: Rule, state: CustomerState) -> ActionChannel | None:
    """The first of the rule's channels the customer consented to."""
    profile = state.profile
    if profile is None:
        return None
    return next((c for c in rule.action.channels if profile.consent.allows(c)), None)


def _ts(at: float) -> datetime:
    return datetime.fromtimestamp(at, tz=UTC)


def in_holdout(customer_id: str, group: str, percent: float) -> bool:
    """Whether a customer is in a holdout group: sticky, the same answer every time.

    >>> in_holdout("c1", "r", 0.0), in_holdout("c1", "r", 100.0)
    (False, True)
    """
    if percent <= 0:
        return False
    digest = hashlib.blake2b(f"{group}\x1f{customer_id}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "big") % 10_000 < percent * 100


@lru_cache(maxsize=1024)
def customer_zone(name: str) -> ZoneInfo:
    """The customer's time zone; UTC for a name that does not load (profiles are checked
    when decoded, but a state written by an older version may hold anything).

    >>> customer_zone("Europe/Berlin").key, customer_zone("America").key
    ('Europe/Berlin', 'UTC')
    """
    try:
        return ZoneInfo(name)
    except Exception:
        return ZoneInfo("UTC")


def quiet_until(quiet: QuietHours, at: float, timezone: str) -> datetime | None:
    """When the quiet hours around ``at`` end (UTC), or None outside them.

    >>> from forewarn.rules.rulebook import QuietHours
    >>> q = QuietHours(start="21:00", end="08:00")
    >>> at = datetime(2026, 1, 1, 22, 30, tzinfo=UTC).timestamp()  # 23:30 in Berlin
    >>> quiet_until(q, at, "Europe/Berlin").isoformat()
    '2026-01-02T07:00:00+00:00'
    >>> quiet_until(q, at, "America/New_York") is None  # 17:30 there
    True
    """
    zone = customer_zone(timezone)
    local = datetime.fromtimestamp(at, tz=zone)
    minute = local.hour * 60 + local.minute
    start, end = quiet.start, quiet.end
    inside = start <= minute < end if start < end else (minute >= start or minute < end)
    if not inside:
        return None
    day = local.date() if minute < end else local.date() + timedelta(days=1)
    ends = datetime(day.year, day.month, day.day, end // 60, end % 60, tzinfo=zone)
    return ends.astimezone(UTC)


@dataclass(slots=True)
class _Proposal:
    rule: Rule
    moment: Moment
    action: OutreachAction


@dataclass(slots=True)
class DecisionMaker:
    """Collects the decisions and actions of one batch."""

    rulebook: Rulebook
    friction: FrictionConfig
    now: datetime
    model_version: str
    decisions: list[Decision] = field(default_factory=list)
    actions: list[OutreachAction] = field(default_factory=list)

    def consider(self, m: Moment, rules: list[Rule] | None = None) -> None:
        """Decide every rule ``m`` triggers (``rules``, when the caller already looked)."""
        if rules is None:
            rules = self.rulebook.rules_for(
                m.event.type, m.derived, m.prev_friction, m.friction, m.prev_churn, m.churn
            )
        data = condition_data(m) if any(r.when for r in rules) else None
        proposals = [
            p for rule in rules if requirements_met(rule, m, data) for p in self._decide(rule, m)
        ]
        live = [p for p in proposals if not p.rule.policies.shadow]
        if live:
            self._settle(live)
        for p in proposals:
            if p.rule.policies.shadow:  # never competes with, or blocks, a live rule
                self._record(p.action, shadow=True)

    def _action(self, rule: Rule, m: Moment, channel: ActionChannel) -> OutreachAction:
        e = m.event
        # Only short text and finite numbers (1e400 parses as infinity): an action must stay
        # small and valid JSON whatever upstream sends.
        attrs: dict[str, AttributeValue] = {
            k: v
            for k in rule.action.attributes
            if isinstance(v := e.properties.get(k), str | int | float | bool)
            and not (isinstance(v, str) and len(v) > MAX_ATTRIBUTE_CHARS)
            and not (isinstance(v, float) and not math.isfinite(v))
        }
        return OutreachAction(
            action_id=action_id(rule.id, e.customer_id, e.event_id),
            customer_id=e.customer_id,
            rule_id=rule.id,
            playbook=rule.action.playbook,
            channel=channel,
            priority=rule.action.priority,
            template=rule.action.template,
            reasons=explain(rule, m, self.friction),
            scores=Scores(
                friction=round(min(100.0, max(0.0, m.friction)), 1),
                churn_risk=None if m.churn is None else round(m.churn, 4),
            ),
            trigger_event_id=e.event_id,
            triggered_at=e.occurred_at,
            decided_at=self.now,
            expires_at=e.occurred_at + timedelta(seconds=rule.action.ttl),
            transactional=rule.action.transactional,
            rulebook_version=self.rulebook.version,
            model_version=self.model_version,
            attributes=attrs,
        )

    def _record(
        self,
        action: OutreachAction,
        why: SuppressionReason | None = None,
        detail: str | None = None,
        *,
        shadow: bool = False,
    ) -> None:
        status = DecisionStatus.emitted if why is None else DecisionStatus.suppressed
        self.decisions.append(
            Decision(
                decision_id=decision_id(action.action_id),
                customer_id=action.customer_id,
                rule_id=action.rule_id,
                status=DecisionStatus.shadow if shadow and why is None else status,
                suppressed_by=why,
                detail=detail,
                action=action,
                at=self.now,
            )
        )

    def _decide(self, rule: Rule, m: Moment) -> list[_Proposal]:
        """The rule's action if no policy stops it (else its suppression is recorded)."""
        state = m.state
        profile = state.profile
        channel = choose_channel(rule, state)
        action = self._action(rule, m, channel or rule.action.channels[0])
        if profile is not None and profile.do_not_contact:
            self._record(action, SuppressionReason.do_not_contact, "profile says do not contact")
            return []
        if channel is None:
            wanted = ", ".join(c.value for c in rule.action.channels)
            why = "no profile yet" if profile is None else f"no consent for any of {wanted}"
            self._record(action, SuppressionReason.consent, why)
            return []
        ttl = rule.action.ttl
        age = (m.stream_time if m.stream_time is not None else m.at) - m.at
        if age > ttl:
            self._record(
                action,
                SuppressionReason.expired,
                f"trigger arrived {_ago(age)} behind the stream; the action lives {_ago(ttl)}",
            )
            return []
        if state.sent(action.action_id):
            self._record(action, SuppressionReason.duplicate, "this action was already sent")
            return []
        last = state.last_contact_by_rule.get(rule.id)
        cooldown = rule.policies.cooldown
        if last is not None and last <= m.at < last + cooldown:
            self._record(
                action,
                SuppressionReason.cooldown,
                f"rule reached this customer {_ago(m.at - last)} ago",
            )
            return []
        quiet = rule.policies.quiet_hours
        tz = profile.timezone if profile else "UTC"
        ends = quiet_until(quiet, m.at, tz) if quiet is not None else None
        # A deferred action reaches the customer when the quiet hours end: that is when it
        # counts against the budget, and what it is charged at (``_settle``).
        deferred = ends is not None and quiet is not None and quiet.mode == "defer"
        deliver_at = ends.timestamp() if deferred and ends is not None else m.at
        if not rule.action.transactional:
            for w in self.rulebook.budget:
                # Every window of this length that holds the delivery lies inside
                # (t - w, t + w): counting there keeps the budget even when events arrive
                # out of order.
                used = sum(1 for t in state.contact_times if abs(t - deliver_at) < w.within)
                if used >= w.at_most:
                    self._record(
                        action,
                        SuppressionReason.frequency_cap,
                        f"contact budget spent: {used} of {w.at_most} in {_ago(w.within)}",
                    )
                    return []
        if quiet is not None and ends is not None:
            if quiet.mode == "drop":
                self._record(action, SuppressionReason.quiet_hours, "in the customer's quiet hours")
                return []
            if ends > action.expires_at:
                self._record(
                    action,
                    SuppressionReason.quiet_hours,
                    "quiet hours outlast the action's time-to-live",
                )
                return []
            action = action.model_copy(update={"not_before": ends})
        cid = m.event.customer_id
        if in_holdout(cid, "global", self.rulebook.holdout_percent) or in_holdout(
            cid, rule.id, rule.policies.holdout_percent
        ):
            self._record(action, SuppressionReason.holdout, "customer is in the holdout group")
            return []
        return [_Proposal(rule, m, action)]

    def _settle(self, proposals: list[_Proposal]) -> None:
        """One action per trigger: the highest priority, then the earliest in the rulebook."""
        order = self.rulebook.position
        best = max(proposals, key=lambda p: (p.rule.action.priority, -order[p.rule.id]))
        a = best.action
        best.moment.state.remember_action(
            a.action_id,
            a.rule_id,
            a.channel.value,
            best.moment.at,
            delivered_at=a.not_before.timestamp() if a.not_before else None,
            counts=not a.transactional,
        )
        self.actions.append(a)
        self._record(a)
        for p in proposals:
            if p is not best:
                self._record(p.action, SuppressionReason.arbitration, f"{a.rule_id} took priority")

    def finish(self) -> list[OutreachAction]:
        """The batch's emitted actions."""
        return self.actions
