"""From scored events to decisions: requirements, reasons, policies, arbitration.

Policies (``policies.POLICIES``) run in this order, and the first that says no is recorded as
the decision's ``suppressed_by``:

1. ``do_not_contact`` - the profile forbids any contact;
2. ``consent`` - none of the rule's channels is consented to (no profile: no consent);
3. ``expired`` - the trigger is older than the action's time-to-live, measured against the
   partition's stream time (a late or backlogged event: too late to act on);
4. ``holdout`` - the customer is in the global or the rule's holdout group (sticky hash);
   every decision that gets this far is an experiment assignment (``Decision.arm``);
5. ``duplicate`` - this exact action (same deterministic id) was already emitted;
6. ``cooldown`` - the rule reached this customer too recently;
7. ``frequency_cap`` - the customer-wide contact budget is spent in one of its rolling
   event-time windows around the moment the action would reach the customer (the end of
   its quiet hours when deferred); transactional actions are exempt and not charged;
8. ``quiet_hours`` - the trigger falls in the rule's quiet hours in the customer's time
   zone and the rule drops (a deferring rule emits with ``not_before`` instead);
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

import math
import uuid
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from typing import Any

from forewarn.models.contracts import (
    MAX_ATTRIBUTE_CHARS,
    ActionChannel,
    AttributeValue,
    Decision,
    DecisionStatus,
    OutreachAction,
    Reason,
    Scores,
    SuppressionReason,
)
from forewarn.models.friction import FrictionConfig
from forewarn.models.state import CustomerState
from forewarn.rules.conditions import condition_data, evaluate
from forewarn.rules.moment import Moment
from forewarn.rules.partition_volumes import PartitionVolumes
from forewarn.rules.policies import Proposal, ago, apply_policies, experiment_arm
from forewarn.rules.rulebook import Rule, Rulebook
from forewarn.rules.volume import AdaptiveThreshold, tiebreak

_IDS = uuid.UUID("6f1c2a9e-3b1d-4f7a-9d0e-6a4b8f2c1e55")


def action_id(rule_id: str, customer_id: str, trigger_event_id: str) -> str:
    """Deterministic: the same rule on the same trigger for the same customer, the same id."""
    return str(uuid.uuid5(_IDS, f"{rule_id}\x1f{customer_id}\x1f{trigger_event_id}"))


def decision_id(action: str) -> str:
    return str(uuid.uuid5(_IDS, f"decision\x1f{action}"))


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
    if req.contact_risk_at_least is not None and (
        m.contact is None or m.contact < req.contact_risk_at_least
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


def volume_score(rule: Rule, m: Moment) -> float | None:
    """The score a volume-targeted rule ranks moments by (None: its model is not loaded)."""
    assert rule.require.volume is not None
    score = rule.require.volume.score
    if score == "friction":
        return m.friction
    return m.churn if score == "churn_risk" else m.contact


def volume_reason(rule: Rule, m: Moment, threshold: AdaptiveThreshold) -> Reason:
    """'churn risk 0.31, in the top 0.4% of the last 24 h (target 5 per 1,000 ...)'."""
    vol = rule.require.volume
    assert vol is not None
    score = volume_score(rule, m) or 0.0
    shown = f"{score:.0f}" if vol.score == "friction" else f"{score:.2f}"
    return Reason(
        signal="volume",
        contribution=0.0,
        detail=(
            f"{_words(vol.score)} {shown}, in the top {threshold.top_share():.1%} of the last "
            f"{ago(vol.window)} (target {vol.per_1000_active_per_day:g} per 1,000 active "
            "customers a day)"
        ),
    )


def _words(kind: str) -> str:
    return kind.replace("_", " ")


def explain(rule: Rule, m: Moment, config: FrictionConfig) -> list[Reason]:
    """Why: the trigger, then the signals that add most to the friction score."""
    hits = [k for k in (m.event.type, *m.derived) if k in rule.triggers.events]
    churn_at = rule.triggers.scores.get("churn_risk")
    contact_at = rule.triggers.scores.get("contact_risk")
    if hits:
        what = f"triggered by {_words(hits[0])}"
    elif (
        churn_at is not None and m.churn is not None and (m.prev_churn or 0.0) < churn_at <= m.churn
    ):
        what = f"churn risk rose from {m.prev_churn or 0.0:.1%} to {m.churn:.1%}"
    elif (
        contact_at is not None
        and m.contact is not None
        and (m.prev_contact or 0.0) < contact_at <= m.contact
    ):
        what = f"contact risk rose from {m.prev_contact or 0.0:.1%} to {m.contact:.1%}"
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
        detail = f"{sig.label}: {n} in the last {ago(window)}" if n else f"{sig.label} earlier on"
        reasons.append(Reason(signal=sig.name, contribution=round(points, 1), detail=detail))
    for words, log_odds in m.churn_reasons:
        reasons.append(
            Reason(
                signal="churn_risk",
                contribution=round(log_odds, 2),
                detail=f"churn risk raised: {words} ({_odds(log_odds)})",
            )
        )
    for words, log_odds in m.contact_reasons if rule.uses_score("contact_risk") else ():
        reasons.append(
            Reason(
                signal="contact_risk",
                contribution=round(log_odds, 2),
                detail=f"contact risk raised: {words} ({_odds(log_odds)})",
            )
        )
    return reasons


def _odds(log_odds: float) -> str:
    """A feature's share of a risk in plain words (the log-odds stay in ``contribution``).

    >>> _odds(1.35), _odds(0.05)
    ('odds x3.9', 'odds x1.05')
    """
    factor = math.exp(log_odds)
    return f"odds x{factor:.1f}" if factor >= 1.1 else f"odds x{factor:.2f}"


def choose_channel(rule: Rule, state: CustomerState) -> ActionChannel | None:
    """The first of the rule's channels the customer consented to."""
    profile = state.profile
    if profile is None:
        return None
    return next((c for c in rule.action.channels if profile.consent.allows(c)), None)


@dataclass(slots=True)
class DecisionMaker:
    """Collects the decisions and actions of one batch."""

    rulebook: Rulebook
    friction: FrictionConfig
    now: datetime
    model_version: str
    decisions: list[Decision] = field(default_factory=list)
    actions: list[OutreachAction] = field(default_factory=list)

    def consider(
        self, m: Moment, rules: list[Rule] | None = None, volumes: PartitionVolumes | None = None
    ) -> None:
        """Decide every rule ``m`` triggers (``rules``, when the caller already looked);
        ``volumes``: the partition's thresholds for the rules with a volume target."""
        if rules is None:
            rules = self.rulebook.rules_for(
                m.event.type, m.derived, m.prev_friction, m.friction, m.prev_churn, m.churn,
                m.prev_contact, m.contact,
            )  # fmt: skip
        data = condition_data(m) if any(r.when for r in rules) else None
        proposals = [
            p
            for rule in rules
            if requirements_met(rule, m, data) and self._within_volume(rule, m, volumes)
            for p in self._decide(rule, m, volumes)
        ]
        live = [p for p in proposals if not p.rule.policies.shadow]
        if live:
            best = self._settle(live)
            self._sent(best, volumes)
        for p in proposals:
            if p.rule.policies.shadow:  # never competes with, or blocks, a live rule
                self._record(p.action, shadow=True)
                self._sent(p, volumes)  # what it would have sent, so its volume is real

    def _within_volume(self, rule: Rule, m: Moment, volumes: PartitionVolumes | None) -> bool:
        """A volume-targeted rule's moment counts towards its recent moments, and passes when
        its score is among the riskiest enough to hold the volume (``rules/volume.py``)."""
        if rule.require.volume is None:
            return True
        score = volume_score(rule, m)
        if volumes is None or score is None:
            return False
        return volumes.rules[rule.id].observe(m.now, score, tiebreak(m.event.event_id))

    def _sent(self, p: Proposal, volumes: PartitionVolumes | None) -> None:
        if volumes is not None and p.rule.require.volume is not None:
            volumes.rules[p.rule.id].sent(p.moment.now)

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
                contact_risk=None if m.contact is None else round(m.contact, 4),
            ),
            trigger_event_id=e.event_id,
            triggered_at=e.occurred_at,
            decided_at=self.now,
            expires_at=e.occurred_at + timedelta(seconds=rule.action.ttl),
            transactional=rule.action.transactional,
            rulebook_version=self.rulebook.version,
            model_version=self.model_version,
            contact_model_version=m.contact_version,
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
        # arbitration comes after the holdout check: the loser was assigned to treatment
        arm = None if shadow else experiment_arm(why)
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
                arm=arm,
            )
        )

    def _decide(
        self, rule: Rule, m: Moment, volumes: PartitionVolumes | None = None
    ) -> list[Proposal]:
        """The rule's action if no policy stops it (else its suppression is recorded)."""
        channel = choose_channel(rule, m.state)
        action = self._action(rule, m, channel or rule.action.channels[0])
        if volumes is not None and rule.require.volume is not None:
            reason = volume_reason(rule, m, volumes.rules[rule.id])
            action = action.model_copy(update={"reasons": [*action.reasons, reason]})
        proposal = Proposal(rule, m, action, channel, self.rulebook)
        action, no = apply_policies(proposal)
        if no is not None:
            self._record(action, no.reason, no.detail, shadow=rule.policies.shadow)
            return []
        return [replace(proposal, action=action)]

    def _settle(self, proposals: list[Proposal]) -> Proposal:
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
        return best

    def finish(self) -> list[OutreachAction]:
        """The batch's emitted actions."""
        return self.actions
