"""One customer's side of every experiment: what was decided, what was reported back, and
what happened on the journey, folded so that a replay changes nothing.

The feedback plane keeps one ``CustomerLedger`` per customer (a faust table keyed by
customer). Everything the experiment reports is read off the ledgers
(``experiments.report``), so there is no counter anywhere to double: a decision, an outcome
or a milestone seen twice (a replay, an aborted transaction the broker showed anyway, a
restarted worker) finds its id already in the ledger and changes nothing.

**Arms** (intention to treat). The scoring worker names each decision's arm
(``Decision.arm``): every decision of a live rule that reached the holdout check is
``treated`` or ``holdout``, including treated ones that a cooldown, the budget, quiet hours
or arbitration stopped afterwards. Decisions stopped before it (consent, expiry) and shadow
rules' are not part of the experiment.

**Episodes.** Treated customers are cooled down by the action they got, held-out ones are
not, so the holdout arm would count more decisions per customer for the same trouble. An
assignment therefore opens an episode: further decisions of the same rule for the customer
within the contact window belong to it. Each episode counts once.

**Maturity.** An episode counts for a measure once the customer's partition's stream time
(its watermark) has passed the trigger time plus the measure's window plus the allowed
lateness; before that it is pending.

>>> from datetime import UTC, datetime, timedelta
>>> from forewarn.models.contracts import Milestone
>>> ledger = CustomerLedger(customer_id="c1")
>>> t0 = datetime(2026, 3, 1, tzinfo=UTC)
>>> record_milestone(ledger, Milestone(event_id="e1", customer_id="c1",
...     type="support_contact", occurred_at=t0), ExperimentWindows())
True
>>> record_milestone(ledger, Milestone(event_id="e1", customer_id="c1",
...     type="support_contact", occurred_at=t0), ExperimentWindows())  # the same again
False
"""

from __future__ import annotations

from datetime import datetime, timedelta
from enum import StrEnum
from typing import Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from forewarn.models.contracts import (
    Decision,
    DecisionStatus,
    Milestone,
    Outcome,
    OutcomeKind,
)

Arm = Literal["treated", "holdout"]
Measure = Literal["contact", "cancellation", "conversion"]
MEASURES: tuple[Measure, ...] = ("contact", "cancellation", "conversion")
#: the journey event each measure counts
MEASURED_EVENT: dict[Measure, str] = {
    "contact": "support_contact",
    "cancellation": "subscription_cancelled",
    "conversion": "purchase",
}


class ExperimentWindows(BaseModel):
    """How long after a trigger each outcome counts, and how late a record may come."""

    model_config = ConfigDict(frozen=True)

    contact: timedelta = Field(default=timedelta(hours=24), gt=timedelta(0))
    cancellation: timedelta = Field(default=timedelta(days=14), gt=timedelta(0))
    conversion: timedelta = Field(default=timedelta(days=7), gt=timedelta(0))
    #: records older than the watermark by up to this much still count
    allowed_lateness: timedelta = Field(default=timedelta(minutes=10), ge=timedelta(0))
    #: how long an outcome for an action not seen yet waits for its decision
    orphan_grace: timedelta = Field(default=timedelta(minutes=15), ge=timedelta(0))
    #: decisions kept per customer for ``forewarn why``
    recent_decisions: int = Field(default=20, ge=1)

    def of(self, measure: Measure) -> timedelta:
        return {
            "contact": self.contact,
            "cancellation": self.cancellation,
            "conversion": self.conversion,
        }[measure]

    @property
    def longest(self) -> timedelta:
        return max(self.contact, self.cancellation, self.conversion)

    @property
    def retention(self) -> timedelta:
        """How long anything is kept in detail: until every window that could need it has
        closed."""
        return self.longest + self.allowed_lateness


class OutcomeProblem(StrEnum):
    """Why an outcome could not be counted (the dead letter's ``error_type``)."""

    #: no decision with this action id reached the customer's ledger in time
    unknown_action = "unknown_action"
    #: the outcome says it happened before the event that triggered its action
    outcome_before_action = "outcome_before_action"
    #: the outcome names another customer than the action it is about
    customer_mismatch = "customer_mismatch"


class Episode(BaseModel):
    """A customer's assignment to a rule's experiment, from its first decision."""

    decision_id: str
    rule_id: str
    channel: str
    arm: Arm
    at: AwareDatetime


class ActionMark(BaseModel):
    """An emitted action and what its tool reported back (first time of each kind)."""

    rule_id: str
    channel: str
    at: AwareDatetime
    outcomes: dict[OutcomeKind, AwareDatetime] = Field(default_factory=dict)


class MilestoneMark(BaseModel):
    event_id: str
    type: str
    at: AwareDatetime


class ArmTally(BaseModel):
    """Matured episodes of one rule, channel and arm, and how many had each outcome."""

    episodes: dict[Measure, int] = Field(default_factory=dict)
    events: dict[Measure, int] = Field(default_factory=dict)

    def add(self, measure: Measure, happened: bool) -> None:
        self.episodes[measure] = self.episodes.get(measure, 0) + 1
        self.events[measure] = self.events.get(measure, 0) + int(happened)


class FunnelTally(BaseModel):
    """Actions of one rule and channel and the outcomes their tools reported."""

    actions: int = 0
    outcomes: dict[OutcomeKind, int] = Field(default_factory=dict)

    def add(self, mark: ActionMark) -> None:
        self.actions += 1
        for kind in mark.outcomes:
            self.outcomes[kind] = self.outcomes.get(kind, 0) + 1


def tally_key(rule_id: str, channel: str, arm: str = "") -> str:
    return f"{rule_id}|{channel}|{arm}"


class CustomerLedger(BaseModel):
    """Everything the feedback plane knows about one customer."""

    customer_id: str
    #: the latest decisions, emitted and suppressed, newest last (for ``forewarn why``)
    recent: list[Decision] = Field(default_factory=list)
    #: every decision id seen within the retention, with its trigger time (deduplication)
    seen: dict[str, AwareDatetime] = Field(default_factory=dict)
    #: episodes with a window still open somewhere
    episodes: list[Episode] = Field(default_factory=list)
    actions: dict[str, ActionMark] = Field(default_factory=dict)
    milestones: list[MilestoneMark] = Field(default_factory=list)
    #: outcomes that came before their action's decision, waiting for it
    orphans: list[Outcome] = Field(default_factory=list)
    #: what was folded away once every window had closed, by ``tally_key``
    settled_arms: dict[str, ArmTally] = Field(default_factory=dict)
    settled_funnels: dict[str, FunnelTally] = Field(default_factory=dict)
    #: everything before this was folded into the tallies: a replay of it is ignored
    settled_before: AwareDatetime | None = None

    def is_settled(self, at: datetime) -> bool:
        return self.settled_before is not None and at < self.settled_before


def record_decision(ledger: CustomerLedger, decision: Decision, windows: ExperimentWindows) -> bool:
    """Adds a decision; False when it was seen before (nothing changes)."""
    action = decision.action
    at = action.triggered_at
    if decision.decision_id in ledger.seen or ledger.is_settled(at):
        return False
    ledger.seen[decision.decision_id] = at
    ledger.recent.append(decision)
    ledger.recent.sort(key=lambda d: (d.action.triggered_at, d.decision_id))
    del ledger.recent[: -windows.recent_decisions]
    if decision.status is DecisionStatus.emitted:
        ledger.actions[action.action_id] = ActionMark(
            rule_id=decision.rule_id, channel=action.channel.value, at=at
        )
    arm = decision.arm
    if arm is not None and not _in_open_episode(ledger, decision.rule_id, at, windows):
        ledger.episodes.append(
            Episode(
                decision_id=decision.decision_id,
                rule_id=decision.rule_id,
                channel=action.channel.value,
                arm=arm,
                at=at,
            )
        )
    return True


def _in_open_episode(
    ledger: CustomerLedger, rule_id: str, at: datetime, windows: ExperimentWindows
) -> bool:
    return any(
        e.rule_id == rule_id and e.at <= at < e.at + windows.contact for e in ledger.episodes
    )


def record_milestone(
    ledger: CustomerLedger, milestone: Milestone, windows: ExperimentWindows
) -> bool:
    """Adds a journey milestone; False when it was seen before."""
    if ledger.is_settled(milestone.occurred_at) or any(
        m.event_id == milestone.event_id for m in ledger.milestones
    ):
        return False
    ledger.milestones.append(
        MilestoneMark(event_id=milestone.event_id, type=milestone.type, at=milestone.occurred_at)
    )
    ledger.milestones.sort(key=lambda m: (m.at, m.event_id))
    return True


def record_outcome(
    ledger: CustomerLedger, outcome: Outcome, windows: ExperimentWindows
) -> OutcomeProblem | None:
    """Adds a tool's outcome to its action (once per kind). An outcome whose action is not
    in the ledger waits as an orphan (``settle`` decides its fate); one that cannot be true
    is refused with its reason."""
    if outcome.customer_id != ledger.customer_id:
        return OutcomeProblem.customer_mismatch
    mark = ledger.actions.get(outcome.action_id)
    if mark is None:
        if not any(
            o.action_id == outcome.action_id and o.kind == outcome.kind for o in ledger.orphans
        ):
            ledger.orphans.append(outcome)
        return None
    if outcome.at < mark.at:
        return OutcomeProblem.outcome_before_action
    mark.outcomes.setdefault(outcome.kind, outcome.at)
    return None


def matured(episode: Episode, measure: Measure, watermark: datetime, w: ExperimentWindows) -> bool:
    return watermark >= episode.at + w.of(measure) + w.allowed_lateness


def happened(
    ledger: CustomerLedger, episode: Episode, measure: Measure, w: ExperimentWindows
) -> bool:
    """Whether the measure's journey event followed the episode's trigger within its window."""
    kind, end = MEASURED_EVENT[measure], episode.at + w.of(measure)
    return any(m.type == kind and episode.at < m.at <= end for m in ledger.milestones)


def orphan_deadline(outcome: Outcome, windows: ExperimentWindows) -> datetime:
    """When an outcome still waiting for its decision is refused whatever else happens:
    once its partition's stream time is a retention past it."""
    return outcome.at + windows.retention


def settle(
    ledger: CustomerLedger, watermark: datetime, windows: ExperimentWindows
) -> list[tuple[Outcome, OutcomeProblem]]:
    """Folds what every window has closed on into the settled tallies and forgets its
    detail; returns the orphan outcomes refused for good (to the dead letters).

    An outcome can be read before its action's decision (two topics, read at their own
    pace). It waits until the customer has a decision triggered ``orphan_grace`` after it
    (a customer's decisions arrive in order, so its own cannot come any more), or until
    ``orphan_deadline``.

    Settling is a compaction: the report reads the same numbers before and after it.
    """
    latest = max(ledger.seen.values(), default=None)
    refused: list[tuple[Outcome, OutcomeProblem]] = []
    waiting: list[Outcome] = []
    for orphan in ledger.orphans:
        if orphan.action_id in ledger.actions:
            problem = record_outcome(ledger, orphan, windows)
            if problem is not None:
                refused.append((orphan, problem))
        elif (
            latest is not None and latest >= orphan.at + windows.orphan_grace
        ) or watermark >= orphan_deadline(orphan, windows):
            refused.append((orphan, OutcomeProblem.unknown_action))
        else:
            waiting.append(orphan)
    ledger.orphans = waiting

    open_episodes = []
    for episode in ledger.episodes:
        if all(matured(episode, m, watermark, windows) for m in MEASURES):
            tally = ledger.settled_arms.setdefault(
                tally_key(episode.rule_id, episode.channel, episode.arm), ArmTally()
            )
            for m in MEASURES:
                tally.add(m, happened(ledger, episode, m, windows))
        else:
            open_episodes.append(episode)
    ledger.episodes = open_episodes

    horizon = watermark - windows.retention
    if ledger.settled_before is None or horizon > ledger.settled_before:
        ledger.settled_before = horizon
    horizon = ledger.settled_before
    for action_id, mark in list(ledger.actions.items()):
        if mark.at < horizon:
            funnel = ledger.settled_funnels.setdefault(
                tally_key(mark.rule_id, mark.channel), FunnelTally()
            )
            funnel.add(mark)
            del ledger.actions[action_id]
    ledger.seen = {d: at for d, at in ledger.seen.items() if at >= horizon}
    ledger.milestones = [m for m in ledger.milestones if m.at >= horizon]
    return refused
