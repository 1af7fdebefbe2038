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
    expected_holdout_share: float | None
    sample_ratio_mismatch_p: float | None
    sample_ratio_mismatch: bool
    #: the always-valid p-value adjusted across rules (Benjamini-Hochberg)
    adjusted_p_value: float | None = None
    funnel: Funnel
    channels: list[ChannelExperiment]


class Coverage(BaseModel):
    """Support contacts that an action reached first, over the contacts the ledgers still
    hold in detail (the retention: the longest outcome window plus the lateness): a rolling
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


class _Counts:
    """Matured and pending episodes by measure and arm, for one group."""

    def __init__(self) -> None:
        self.tally = {"treated": ArmTally(), "holdout": ArmTally()}
        self.pending = {"treated": 0, "holdout": 0}

    def merge(self, arm: str, other: ArmTally) -> None:
        for m in MEASURES:
            mine = self.tally[arm]
            mine.episodes[m] = mine.episodes.get(m, 0) + other.episodes.get(m, 0)
            mine.events[m] = mine.events.get(m, 0) + other.events.get(m, 0)


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
    ledgers: Iterable[tuple[CustomerLedger, datetime | None]],
    windows: ExperimentWindows,
    expected_holdout_share: Mapping[str, float] | None = None,
) -> ExperimentReport:
    """The report over every ledger, each with its partition's watermark (None: nothing
    matured there yet). ``expected_holdout_share``: per rule, the share of assignments the
    rulebook holds out (global and rule holdout together), for the sample-ratio check."""
    shares = expected_holdout_share or {}
    per_rule: dict[str, _Counts] = {}
    per_channel: dict[tuple[str, str], _Counts] = {}
    overall = _Counts()
    funnels: dict[str, FunnelTally] = {}
    contacts = anticipated = 0
    leads: list[float] = []
    as_of: datetime | None = None

    for ledger, watermark in ledgers:
        if watermark is not None and (as_of is None or watermark > as_of):
            as_of = watermark
        for key, tally in ledger.settled_arms.items():
            rule, channel, arm = key.split("|")
            for group in (
                per_rule.setdefault(rule, _Counts()),
                per_channel.setdefault((rule, channel), _Counts()),
                overall,
            ):
                group.merge(arm, tally)
        for key, funnel in ledger.settled_funnels.items():
            _add_funnel(funnels.setdefault(key.split("|")[0], FunnelTally()), funnel)
        for mark in ledger.actions.values():
            funnels.setdefault(mark.rule_id, FunnelTally()).add(mark)
        for episode in ledger.episodes:
            live = ArmTally()
            for m in MEASURES:
                if watermark is not None and matured(episode, m, watermark, windows):
                    live.add(m, happened(ledger, episode, m, windows))
            for group in (
                per_rule.setdefault(episode.rule_id, _Counts()),
                per_channel.setdefault((episode.rule_id, episode.channel), _Counts()),
                overall,
            ):
                group.merge(episode.arm, live)
                if "contact" not in live.episodes:
                    group.pending[episode.arm] += 1
        action_times = sorted(mark.at for mark in ledger.actions.values())
        for milestone in ledger.milestones:
            if milestone.type != "support_contact":
                continue
            contacts += 1
            before = [t for t in action_times if t < milestone.at]
            if before and milestone.at - before[-1] <= windows.contact:
                anticipated += 1
                leads.append((milestone.at - before[-1]).total_seconds() / 60)

    rules = []
    for rule_id in sorted(per_rule):
        c = per_rule[rule_id]
        t = c.tally["treated"].episodes.get("contact", 0)
        h = c.tally["holdout"].episodes.get("contact", 0)
        share = shares.get(rule_id)
        srm = None if share is None else sample_ratio_mismatch(t, h, share)
        channels = [
            ChannelExperiment(channel=ch, **_comparison(cc))
            for (r, ch), cc in sorted(per_channel.items())
            if r == rule_id
        ]
        rules.append(
            RuleExperiment(
                rule_id=rule_id,
                expected_holdout_share=share,
                sample_ratio_mismatch_p=srm,
                sample_ratio_mismatch=srm is not None and srm < SRM_ALARM,
                funnel=_funnel(funnels.get(rule_id, FunnelTally())),
                channels=channels,
                **_comparison(c),
            )
        )
    adjusted = benjamini_hochberg([r.always_valid_p_value for r in rules])
    for experiment, p in zip(rules, adjusted, strict=True):
        experiment.adjusted_p_value = p
    return ExperimentReport(
        as_of=as_of,
        rules=rules,
        overall=Comparison(**_comparison(overall)),
        coverage=Coverage(
            contacts=contacts,
            anticipated=anticipated,
            coverage=Estimate.of(wilson(anticipated, contacts)),
            median_lead_minutes=round(median(leads), 1) if leads else None,
        ),
    )


def _add_funnel(into: FunnelTally, other: FunnelTally) -> None:
    into.actions += other.actions
    for kind, n in other.outcomes.items():
        into.outcomes[kind] = into.outcomes.get(kind, 0) + n
