"""Simulated customers who respond to outreach, and a simulated marketing tool.

Without this, simulated customers ignore what Forewarn sends and no uplift can be measured.
A ``Responder`` watches the actions and the journey: an action of a playbook with a true
effect lowers its customer's chance of a support contact (and of a cancellation) for a
while after it arrives. Each such event is kept or prevented by a draw fixed by the event
and the action, so a replay prevents the same ones. Some playbooks have no effect at all,
so a useless rule is visible in the experiment.

The simulated tool reports what became of each action (delivered, opened, clicked,
converted, bounced, unsubscribed, complained) as ``Outcome`` records, with rates by channel.

>>> from datetime import UTC, datetime
>>> r = Responder({"payment_recovery": TrueEffect(contact=1.0)})
>>> t0 = datetime(2026, 3, 1, tzinfo=UTC)
>>> from forewarn.models.contracts import JourneyEvent
>>> contact = JourneyEvent(event_id="e9", customer_id="c1", type="support_contact",
...                        occurred_at=t0 + timedelta(hours=1))
>>> r.keeps(contact)
True
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from pydantic import BaseModel, ConfigDict, Field

from forewarn.models.contracts import JourneyEvent, Outcome, OutcomeKind, OutreachAction
from forewarn.models.state import stable_fraction


class TrueEffect(BaseModel):
    """What one action of a playbook does to its customer, as a relative reduction: 0.3
    prevents 30% of the support contacts (or cancellations) that would have come within
    the window after it arrived."""

    model_config = ConfigDict(frozen=True)

    contact: float = Field(default=0.0, ge=0, le=1)
    cancellation: float = Field(default=0.0, ge=0, le=1)


#: the simulator's truth per playbook; ``agent_callback`` and ``in_session_help`` do nothing
#: (a callback offer and a generic help banner that customers ignore), so the experiment
#: must find no effect for the rules that use them
TRUE_EFFECTS: dict[str, TrueEffect] = {
    "payment_recovery": TrueEffect(contact=0.4),
    "delivery_apology": TrueEffect(contact=0.35),
    "checkout_assist": TrueEffect(contact=0.3),
    "retention_offer": TrueEffect(contact=0.1, cancellation=0.3),
    "agent_callback": TrueEffect(),
    "in_session_help": TrueEffect(),
}


def true_effect(text: str) -> tuple[str, TrueEffect]:
    """A playbook's true effect from the command line: ``playbook=CONTACT[:CANCELLATION]``,
    relative reductions between 0 and 1.

    >>> true_effect("retention_offer=0.1:0.3")
    ('retention_offer', TrueEffect(contact=0.1, cancellation=0.3))
    """
    playbook, sep, numbers = text.partition("=")
    if not sep or not playbook:
        raise ValueError(
            f"{text!r}: give playbook=CONTACT[:CANCELLATION], e.g. payment_recovery=0.4"
        )
    contact, _, cancellation = numbers.partition(":")
    return playbook, TrueEffect(contact=float(contact), cancellation=float(cancellation or 0))


#: (delivered, opened | delivered, clicked | opened, converted | clicked) by channel
_FUNNEL: dict[str, tuple[float, float, float, float]] = {
    "email": (0.97, 0.35, 0.2, 0.1),
    "sms": (0.95, 0.8, 0.15, 0.1),
    "push": (0.9, 0.15, 0.3, 0.1),
    "in_app": (1.0, 0.6, 0.3, 0.15),
    "phone": (0.8, 0.8, 0.0, 0.2),
}
_UNSUBSCRIBE = 0.004
_COMPLAINT = 0.0005


@dataclass(frozen=True, slots=True)
class _Treatment:
    action_id: str
    playbook: str
    arrives: datetime


@dataclass
class Responder:
    """The customers' response to the actions they receive (``treat``), applied to the
    journey as it unfolds (``keeps``)."""

    effects: dict[str, TrueEffect] = field(default_factory=lambda: dict(TRUE_EFFECTS))
    contact_window: timedelta = timedelta(hours=24)
    cancellation_window: timedelta = timedelta(days=14)
    #: how long an action takes to reach the customer and be read
    reaction: timedelta = timedelta(minutes=2)
    _treated: dict[str, list[_Treatment]] = field(default_factory=lambda: defaultdict(list))
    #: support contacts and cancellations prevented, by playbook
    prevented: Counter[str] = field(default_factory=Counter)

    def treat(self, action: OutreachAction) -> None:
        """The customer receives ``action`` (at the end of its quiet hours if deferred)."""
        arrives = max(action.triggered_at, action.not_before or action.triggered_at)
        self._treated[action.customer_id].append(
            _Treatment(action.action_id, action.playbook, arrives + self.reaction)
        )

    def keeps(self, event: JourneyEvent) -> bool:
        """Whether the event still happens now that the customer was reached (False: an
        action prevented this support contact or cancellation)."""
        if event.type == "support_contact":
            window, which = self.contact_window, "contact"
        elif event.type == "subscription_cancelled":
            window, which = self.cancellation_window, "cancellation"
        else:
            return True
        for t in self._treated.get(event.customer_id, ()):
            effect = getattr(self.effects.get(t.playbook, TrueEffect()), which)
            reached = t.arrives <= event.occurred_at <= t.arrives + window
            if reached and stable_fraction(f"respond:{event.event_id}:{t.action_id}") < effect:
                self.prevented[t.playbook] += 1
                return False
        return True

    def outcomes(self, action: OutreachAction) -> list[Outcome]:
        """What the simulated marketing tool reports about ``action``: a funnel by channel,
        and a few unsubscribes and complaints."""
        delivered, opened, clicked, converted = _FUNNEL.get(action.channel.value, _FUNNEL["email"])
        at = max(action.triggered_at, action.not_before or action.triggered_at)

        def draw(step: str) -> float:
            return stable_fraction(f"tool:{action.action_id}:{step}")

        def report(kind: OutcomeKind, after: timedelta) -> Outcome:
            return Outcome(
                action_id=action.action_id,
                customer_id=action.customer_id,
                kind=kind,
                at=at + after,
                source="simulated-tool",
            )

        if draw("delivered") >= delivered:
            return [report(OutcomeKind.bounced, timedelta(seconds=30))]
        out = [report(OutcomeKind.delivered, timedelta(seconds=30))]
        marketing = not action.transactional and action.channel.value in ("email", "sms")
        if marketing and draw("unsubscribed") < _UNSUBSCRIBE:
            out.append(report(OutcomeKind.unsubscribed, timedelta(minutes=15)))
        if marketing and draw("complained") < _COMPLAINT:
            out.append(report(OutcomeKind.complained, timedelta(minutes=20)))
        if draw("opened") >= opened:
            return out
        out.append(report(OutcomeKind.opened, timedelta(minutes=10)))
        if draw("clicked") >= clicked:
            return out
        out.append(report(OutcomeKind.clicked, timedelta(minutes=12)))
        if draw("converted") < converted:
            out.append(report(OutcomeKind.converted, timedelta(minutes=30)))
        return out
