"""The experiment report: what outreach changed, per rule, per rule and channel, and
overall, read off the customers' ledgers (``experiments.ledger``) when someone asks.

The headline per rule is ``contact_rate_difference``: the support-contact rate of treated
episodes minus that of held-out ones, with its Newcombe interval, and the same in words
("support contacts avoided per 100 actions"). Beside it: cancellations and conversions,
the risk ratio, the number needed to treat, the guardrails (unsubscribes, complaints), the
delivery funnel, and the honesty checks a reader needs before believing any of it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from statistics import median

from pydantic import AwareDatetime, BaseModel, Field

from forewarn.experiments.ledger import (
    MEASURES,
    ArmTally,
    CustomerLedger,
    ExperimentWindows,
    FunnelTally,
    Measure,
    happened,
    matured,
    tally_key,
)
from forewarn.experiments.statistics import (
    Interval,
    always_valid_p_value,
    benjamini_hochberg,
    confidence_sequence,
    minimum_detectable_effect,
    newcombe_difference,
    number_needed_to_treat,
    risk_ratio,
    sample_ratio_mismatch,
    wilson,
)
from forewarn.models.contracts import OutcomeKind
from forewarn.rules.rulebook import Rulebook

#: below this sample-ratio-mismatch p-value the split is called broken
SRM_ALARM = 0.001


class Estimate(BaseModel):
    estimate: float | None
    low: float | None
    high: float | None

    @classmethod
    def of(cls, interval: Interval, scale: float = 1.0) -> Estimate:
        def s(v: float | None) -> float | None:
            return None if v is None else round(v * scale, 6)

        return cls(estimate=s(interval.estimate), low=s(interval.low), high=s(interval.high))

    def text(self, digits: int = 2) -> str:
        """For a person: ``0.61 [0.52, 0.71]``, the estimate alone without an interval,
        ``-`` without an estimate.

        >>> Estimate(estimate=0.6123, low=0.5, high=0.7).text(), Estimate(estimate=None,
        ...     low=None, high=None).text()
        ('0.61 [0.50, 0.70]', '-')
        """
        if self.estimate is None:
            return "-"
        if self.low is None or self.high is None:
            return f"{self.estimate:.{digits}f}"
        return f"{self.estimate:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"


class ArmRates(BaseModel):
    """One measure in both arms, over matured episodes."""

    treated: int
    treated_events: int
    holdout: int
    holdout_events: int
    treated_rate: Estimate
    holdout_rate: Estimate
    #: treated minus holdout (negative: outreach lowered it), Newcombe interval
    difference: Estimate
    risk_ratio: Estimate


class Comparison(BaseModel):
    """Treated against holdout for one rule (or one rule and channel, or all rules)."""

    treated: int = Field(description="matured treated episodes (contact window closed)")
    holdout: int = Field(description="matured held-out episodes (contact window closed)")
    pending_treated: int
    pending_holdout: int
    contact_rate_difference: Estimate
    contacts_avoided_per_100_actions: Estimate
    number_needed_to_treat: Estimate
    measures: dict[Measure, ArmRates]
    #: fixed-sample intervals are for one look; this one holds at every look
    contact_confidence_sequence: Estimate
    always_valid_p_value: float | None
    minimum_detectable_effect: float | None


class Funnel(BaseModel):
    actions: int
    outcomes: dict[OutcomeKind, int]
    unsubscribe_rate: Estimate
    complaint_rate: Estimate


class ChannelExperiment(Comparison):
    channel: str


class RuleExperiment(Comparison):
    rule_id: str
    #: customers with an episode in each arm: the unit the holdout assigns (a sticky hash
    #: of the customer), so the sample-ratio check counts them, not episodes (a customer's
    #: episodes are not independent draws)
    treated_customers: int
    holdout_customers: int
    expected_holdout_share: float | None
    sample_ratio_mismatch_p: float | None
    sample_ratio_mismatch: bool
    #: the always-valid p-value adjusted across rules (Benjamini-Hochberg)
    adjusted_p_value: float | None = None
    funnel: Funnel
    channels: list[ChannelExperiment]


class Coverage(BaseModel):
    """Support contacts that an action reached first, over the recent ones: those within
    the retention (the longest outcome window plus the lateness) less one contact window
    of the watermark, whose anticipating actions the ledgers all still hold. A rolling
    view, where the experiment's counts are cumulative."""

    contacts: int
    anticipated: int
    coverage: Estimate
    median_lead_minutes: float | None


class ExperimentReport(BaseModel):
    as_of: AwareDatetime | None
    rules: list[RuleExperiment]
    overall: Comparison
    coverage: Coverage
    #: feedback workers that did not answer in time: the customers they own are missing
    #: from every count above (the report says so rather than failing whole)
    missing_workers: list[str] = Field(default_factory=list)


class ExperimentTally(BaseModel):
    """What the report is computed from, over some ledgers: tallies from several feedback
    workers add up (``merge``), so any worker can answer for all of them."""

    as_of: AwareDatetime | None = None
    #: matured episodes by ``tally_key(rule, channel, arm)``
    arms: dict[str, ArmTally] = Field(default_factory=dict)
    #: episodes whose contact window is still open, by the same key
    pending: dict[str, int] = Field(default_factory=dict)
    funnels: dict[str, FunnelTally] = Field(default_factory=dict)
    #: customers with an episode, by ``rule|arm``
    customers: dict[str, int] = Field(default_factory=dict)
    contacts: int = 0
    anticipated: int = 0
    lead_minutes: list[float] = Field(default_factory=list)

    def add_arm(self, key: str, other: ArmTally) -> None:
        _add_arm(self.arms.setdefault(key, ArmTally()), other)

    def add_funnel(self, rule_id: str, other: FunnelTally) -> None:
        mine = self.funnels.setdefault(rule_id, FunnelTally())
        mine.actions += other.actions
        for kind, n in other.outcomes.items():
            mine.outcomes[kind] = mine.outcomes.get(kind, 0) + n

    def merge(self, other: ExperimentTally) -> None:
        if other.as_of is not None and (self.as_of is None or other.as_of > self.as_of):
            self.as_of = other.as_of
        for key, arm in other.arms.items():
            self.add_arm(key, arm)
        for key, n in other.pending.items():
            self.pending[key] = self.pending.get(key, 0) + n
        for key, n in other.customers.items():
            self.customers[key] = self.customers.get(key, 0) + n
        for rule_id, funnel in other.funnels.items():
            self.add_funnel(rule_id, funnel)
        self.contacts += other.contacts
        self.anticipated += other.anticipated
        self.lead_minutes.extend(other.lead_minutes)


def _add_arm(into: ArmTally, other: ArmTally) -> None:
    for m in MEASURES:
        if m in other.episodes:
            into.episodes[m] = into.episodes.get(m, 0) + other.episodes[m]
            into.events[m] = into.events.get(m, 0) + other.events.get(m, 0)


def tally(
    ledgers: Iterable[tuple[CustomerLedger, datetime | None]], windows: ExperimentWindows
) -> ExperimentTally:
    """The tally of every ledger, each with its partition's watermark (None: nothing has
    matured there yet)."""
    t = ExperimentTally()
    for ledger, watermark in ledgers:
        if watermark is not None and (t.as_of is None or watermark > t.as_of):
            t.as_of = watermark
        assigned = {tuple(key.split("|")[::2]) for key in ledger.settled_arms}
        assigned |= {(e.rule_id, e.arm) for e in ledger.episodes}
        for rule_id, arm_name in assigned:
            key = f"{rule_id}|{arm_name}"
            t.customers[key] = t.customers.get(key, 0) + 1
        for key, arm in ledger.settled_arms.items():
            t.add_arm(key, arm)
        for key, funnel in ledger.settled_funnels.items():
            t.add_funnel(key.split("|")[0], funnel)
        for mark in ledger.actions.values():
            live_funnel = FunnelTally()
            live_funnel.add(mark)
            t.add_funnel(mark.rule_id, live_funnel)
        for episode in ledger.episodes:
            key = tally_key(episode.rule_id, episode.channel, episode.arm)
            live = ArmTally()
            for m in MEASURES:
                if watermark is not None and matured(episode, m, watermark, windows):
                    live.add(m, happened(ledger, episode, m, windows))
            t.add_arm(key, live)
            if "contact" not in live.episodes:
                t.pending[key] = t.pending.get(key, 0) + 1
        action_times = sorted(mark.at for mark in ledger.actions.values())
        # the contacts whose anticipating actions are all still held, however recently the
        # ledger was settled: the same numbers whichever ledgers were touched last
        since = None if watermark is None else watermark - windows.retention + windows.contact
        for milestone in ledger.milestones:
            if milestone.type != "support_contact" or (since is not None and milestone.at < since):
                continue
            t.contacts += 1
            before = [a for a in action_times if a < milestone.at]
            if before and milestone.at - before[-1] <= windows.contact:
                t.anticipated += 1
                t.lead_minutes.append((milestone.at - before[-1]).total_seconds() / 60)
    return t


class _Counts:
    """Matured and pending episodes by measure and arm, for one group."""

    def __init__(self) -> None:
        self.tally = {"treated": ArmTally(), "holdout": ArmTally()}
        self.pending = {"treated": 0, "holdout": 0}


def _rates(c: _Counts, m: Measure) -> ArmRates:
    t, h = c.tally["treated"], c.tally["holdout"]
    nt, kt = t.episodes.get(m, 0), t.events.get(m, 0)
    nh, kh = h.episodes.get(m, 0), h.events.get(m, 0)
    return ArmRates(
        treated=nt,
        treated_events=kt,
        holdout=nh,
        holdout_events=kh,
        treated_rate=Estimate.of(wilson(kt, nt)),
        holdout_rate=Estimate.of(wilson(kh, nh)),
        difference=Estimate.of(newcombe_difference(kt, nt, kh, nh)),
        risk_ratio=Estimate.of(risk_ratio(kt, nt, kh, nh)),
    )


def _comparison(c: _Counts) -> dict[str, object]:
    measures = {m: _rates(c, m) for m in MEASURES}
    contact = measures["contact"]
    nt, kt, nh, kh = (
        contact.treated,
        contact.treated_events,
        contact.holdout,
        contact.holdout_events,
    )
    diff = newcombe_difference(kt, nt, kh, nh)
    avoided = Interval(
        None if diff.estimate is None else -diff.estimate,
        None if diff.high is None else -diff.high,
        None if diff.low is None else -diff.low,
    )
    baseline = kh / nh if nh else None
    return {
        "treated": nt,
        "holdout": nh,
        "pending_treated": c.pending["treated"],
        "pending_holdout": c.pending["holdout"],
        "contact_rate_difference": Estimate.of(diff),
        "contacts_avoided_per_100_actions": Estimate.of(avoided, 100),
        "number_needed_to_treat": Estimate.of(number_needed_to_treat(diff)),
        "measures": measures,
        "contact_confidence_sequence": Estimate.of(confidence_sequence(kt, nt, kh, nh)),
        "always_valid_p_value": always_valid_p_value(kt, nt, kh, nh),
        "minimum_detectable_effect": (
            None if baseline is None else minimum_detectable_effect(nt, nh, baseline)
        ),
    }


def _funnel(f: FunnelTally) -> Funnel:
    return Funnel(
        actions=f.actions,
        outcomes=dict(sorted(f.outcomes.items())),
        unsubscribe_rate=Estimate.of(
            wilson(f.outcomes.get(OutcomeKind.unsubscribed, 0), f.actions)
        ),
        complaint_rate=Estimate.of(wilson(f.outcomes.get(OutcomeKind.complained, 0), f.actions)),
    )


def experiment_report(
    t: ExperimentTally, expected_holdout_share: Mapping[str, float] | None = None
) -> ExperimentReport:
    """The report from a tally. ``expected_holdout_share``: per rule, the share of
    assignments the rulebook holds out (global and rule holdout together), for the
    sample-ratio check (``holdout_shares``)."""
    shares = expected_holdout_share or {}
    per_rule: dict[str, _Counts] = {}
    per_channel: dict[tuple[str, str], _Counts] = {}
    overall = _Counts()
    for key in sorted({*t.arms, *t.pending}):
        rule, channel, arm = key.split("|")
        for group in (
            per_rule.setdefault(rule, _Counts()),
            per_channel.setdefault((rule, channel), _Counts()),
            overall,
        ):
            _add_arm(group.tally[arm], t.arms.get(key, ArmTally()))
            group.pending[arm] += t.pending.get(key, 0)
    rules = []
    for rule_id in sorted(per_rule):
        c = per_rule[rule_id]
        n_t = t.customers.get(f"{rule_id}|treated", 0)
        n_h = t.customers.get(f"{rule_id}|holdout", 0)
        share = shares.get(rule_id)
        srm = None if share is None else sample_ratio_mismatch(n_t, n_h, share)
        channels = [
            ChannelExperiment(channel=ch, **_comparison(cc))
            for (r, ch), cc in sorted(per_channel.items())
            if r == rule_id
        ]
        rules.append(
            RuleExperiment(
                rule_id=rule_id,
                treated_customers=n_t,
                holdout_customers=n_h,
                expected_holdout_share=share,
                sample_ratio_mismatch_p=srm,
                sample_ratio_mismatch=srm is not None and srm < SRM_ALARM,
                funnel=_funnel(t.funnels.get(rule_id, FunnelTally())),
                channels=channels,
                **_comparison(c),
            )
        )
    adjusted = benjamini_hochberg([r.always_valid_p_value for r in rules])
    for experiment, p in zip(rules, adjusted, strict=True):
        experiment.adjusted_p_value = p
    return ExperimentReport(
        as_of=t.as_of,
        rules=rules,
        overall=Comparison(**_comparison(overall)),
        coverage=Coverage(
            contacts=t.contacts,
            anticipated=t.anticipated,
            coverage=Estimate.of(wilson(t.anticipated, t.contacts)),
            median_lead_minutes=round(median(t.lead_minutes), 1) if t.lead_minutes else None,
        ),
    )


def holdout_shares(rulebook: Rulebook) -> dict[str, float]:
    """Per rule, the share of its assignments that should be held out: in the global or
    the rule's holdout group (two independent sticky hashes)."""
    g = rulebook.holdout_percent / 100
    return {r.id: 1 - (1 - g) * (1 - r.policies.holdout_percent / 100) for r in rulebook.rules}
