"""The contact policies, as data: ``POLICIES`` is the order they apply in.

Each policy looks at a rule's proposed action for one moment and answers with the action
(possibly deferred) or a ``Suppressed`` with its reason; the first that says no is recorded as
the decision's ``suppressed_by``. Arbitration between rules firing on the same trigger comes
after all of them (``decide.DecisionMaker``). The README and ``decide``'s docstring list the
same order; ``tests/unit/test_policies.py`` checks them against this tuple.

>>> [p.__name__ for p in POLICIES]  # doctest: +NORMALIZE_WHITESPACE
['do_not_contact', 'consent', 'expired', 'holdout', 'duplicate', 'cooldown',
 'frequency_cap', 'quiet_hours']

The holdout comes before every policy that depends on what the customer was sent before
(duplicate, cooldown, budget) and before quiet hours: a decision that reached it is an
experiment assignment, in either arm alike (``experiment_arm``). Placed later, it would hold
out only the customers whom earlier actions had not capped, and the held-out arm would
count the capped moments that the treated arm cannot (docs/decisions.md section 27).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Literal
from zoneinfo import ZoneInfo

from forewarn.models.contracts import ActionChannel, OutreachAction, SuppressionReason
from forewarn.rules.moment import Moment
from forewarn.rules.rulebook import QuietHours, Rule, Rulebook


@dataclass(frozen=True, slots=True)
class Proposal:
    """A rule's action for one moment, as the policies see it."""

    rule: Rule
    moment: Moment
    action: OutreachAction
    #: the first of the rule's channels the customer consented to (None: none)
    channel: ActionChannel | None
    rulebook: Rulebook


@dataclass(frozen=True, slots=True)
class Suppressed:
    reason: SuppressionReason
    detail: str


Verdict = OutreachAction | Suppressed
Policy = Callable[[Proposal], Verdict]


def ago(seconds: float) -> str:
    """A duration in the unit a person would use, rounded.

    >>> [ago(s) for s in (86.485, 1500, 6 * 3600, 5400, 47 * 3600, 7 * 86400, 1.5 * 86400)]
    ['86 s', '25 min', '6 h', '1.5 h', '47 h', '7 days', '36 h']
    """
    if seconds < 120:
        return f"{round(seconds)} s"
    if seconds < 120 * 60:
        minutes = seconds / 60
        return f"{round(minutes)} min" if minutes < 90 else f"{round(minutes / 60, 1):g} h"
    hours = seconds / 3600
    return f"{round(hours, 1):g} h" if hours < 48 else f"{round(hours / 24, 1):g} days"


def do_not_contact(p: Proposal) -> Verdict:
    """The profile forbids any contact."""
    profile = p.moment.state.profile
    if profile is not None and profile.do_not_contact:
        return Suppressed(SuppressionReason.do_not_contact, "profile says do not contact")
    return p.action


def consent(p: Proposal) -> Verdict:
    """None of the rule's channels is consented to (no profile: no consent)."""
    if p.channel is None:
        wanted = ", ".join(c.value for c in p.rule.action.channels)
        profile = p.moment.state.profile
        why = "no profile yet" if profile is None else f"no consent for any of {wanted}"
        return Suppressed(SuppressionReason.consent, why)
    return p.action


def expired(p: Proposal) -> Verdict:
    """The trigger is further behind the partition's stream time than the action's
    time-to-live (a late or backlogged event: too late to act on)."""
    m, ttl = p.moment, p.rule.action.ttl
    age = m.now - m.at
    if age > ttl:
        return Suppressed(
            SuppressionReason.expired,
            f"trigger arrived {ago(age)} behind the stream; the action lives {ago(ttl)}",
        )
    return p.action


def duplicate(p: Proposal) -> Verdict:
    """This exact action (the same deterministic id) was already emitted."""
    if p.moment.state.sent(p.action.action_id):
        return Suppressed(SuppressionReason.duplicate, "this action was already sent")
    return p.action


def cooldown(p: Proposal) -> Verdict:
    """The rule reached this customer too recently."""
    m = p.moment
    last = m.state.last_contact_by_rule.get(p.rule.id)
    if last is not None and last <= m.at < last + p.rule.policies.cooldown:
        why = f"rule reached this customer {ago(m.at - last)} ago"
        return Suppressed(SuppressionReason.cooldown, why)
    return p.action


def frequency_cap(p: Proposal) -> Verdict:
    """The customer-wide contact budget is spent in one of its rolling event-time windows
    around the moment the action would reach the customer (the end of its quiet hours when
    deferred). Transactional actions are exempt and not charged."""
    if p.rule.action.transactional:
        return p.action
    deliver_at = delivery_time(p)
    for w in p.rulebook.budget:
        # Every window of this length that holds the delivery lies inside (t - w, t + w):
        # counting there keeps the budget even when events arrive out of order.
        used = sum(1 for t in p.moment.state.contact_times if abs(t - deliver_at) < w.within)
        if used >= w.at_most:
            return Suppressed(
                SuppressionReason.frequency_cap,
                f"contact budget spent: {used} of {w.at_most} in {ago(w.within)}",
            )
    return p.action


def quiet_hours(p: Proposal) -> Verdict:
    """The trigger falls in the rule's quiet hours in the customer's time zone: a deferring
    rule sends at their end (``not_before``), unless that outlasts the action's
    time-to-live; a dropping rule does not send."""
    quiet = p.rule.policies.quiet_hours
    ends = _quiet_ends(p)
    if quiet is None or ends is None:
        return p.action
    if quiet.mode == "drop":
        return Suppressed(SuppressionReason.quiet_hours, "in the customer's quiet hours")
    if ends > p.action.expires_at:
        return Suppressed(
            SuppressionReason.quiet_hours, "quiet hours outlast the action's time-to-live"
        )
    return p.action.model_copy(update={"not_before": ends})


def holdout(p: Proposal) -> Verdict:
    """The customer is in the global or the rule's holdout group (a sticky hash)."""
    cid = p.moment.event.customer_id
    if in_holdout(cid, "global", p.rulebook.holdout_percent) or in_holdout(
        cid, p.rule.id, p.rule.policies.holdout_percent
    ):
        return Suppressed(SuppressionReason.holdout, "customer is in the holdout group")
    return p.action


#: the order policies apply in; the first that says no is the decision's reason
POLICIES: tuple[Policy, ...] = (
    do_not_contact,
    consent,
    expired,
    holdout,
    duplicate,
    cooldown,
    frequency_cap,
    quiet_hours,
)

#: suppressions that come before the holdout check: those decisions are not assignments
_BEFORE_HOLDOUT = frozenset(
    SuppressionReason(p.__name__) for p in POLICIES[: POLICIES.index(holdout)]
)


def experiment_arm(reason: SuppressionReason | None) -> Literal["treated", "holdout"] | None:
    """The experiment arm of a live rule's decision suppressed by ``reason`` (None:
    emitted): every decision that reached the holdout check is assigned to one arm, and
    those stopped later (a cooldown, the budget, quiet hours, arbitration) stay in the
    treated arm (intention to treat).

    >>> experiment_arm(None), experiment_arm(SuppressionReason.cooldown)
    ('treated', 'treated')
    >>> experiment_arm(SuppressionReason.holdout), experiment_arm(SuppressionReason.consent)
    ('holdout', None)
    """
    if reason is SuppressionReason.holdout:
        return "holdout"
    return None if reason in _BEFORE_HOLDOUT else "treated"


def apply_policies(p: Proposal) -> tuple[OutreachAction, Suppressed | None]:
    """The action as the policies leave it (deferred by quiet hours), and the first no if one
    says no (the action is then what would have been sent)."""
    for policy in POLICIES:
        verdict = policy(p)
        if isinstance(verdict, Suppressed):
            return p.action, verdict
        if verdict is not p.action:
            p = replace(p, action=verdict)
    return p.action, None


def delivery_time(p: Proposal) -> float:
    """When the action reaches the customer (epoch seconds): the end of the rule's quiet
    hours when it defers into them, else the trigger's time. The budget counts it then."""
    quiet = p.rule.policies.quiet_hours
    ends = _quiet_ends(p)
    if quiet is not None and quiet.mode == "defer" and ends is not None:
        return ends.timestamp()
    return p.moment.at


def _quiet_ends(p: Proposal) -> datetime | None:
    quiet = p.rule.policies.quiet_hours
    if quiet is None:
        return None
    profile = p.moment.state.profile
    return quiet_until(quiet, p.moment.at, profile.timezone if profile else "UTC")


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
