"""``forewarn evaluate``: replay a history through the decision path and measure it.

The report (``EvaluationReport``, ``to_json()`` for the file) holds the rulebook's measures
(``measures.py``: contact coverage, lead time, outreach precision, volume, churn capture),
each rule's, the ``on_errors`` baseline (at its own volume and at the rulebook's) and the
``random`` one at the rulebook's volume (the sampled two as the mean of their draws), friction
alone at a threshold, and the churn model's ranking quality. ``format_report`` prints it as a
table for people.

>>> from datetime import UTC, datetime, timedelta
>>> from forewarn.offline.simulator import JourneySimulator
>>> sim = JourneySimulator(40, seed=3, start=datetime(2026, 1, 1, tzinfo=UTC),
...                        span=timedelta(days=2))
>>> report = evaluate(list(sim.events()), sim.profiles())
>>> report.baselines["random"].actions == report.actions
True
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from forewarn.models.contracts import CustomerProfile, JourneyEvent
from forewarn.models.releases import ModelRelease
from forewarn.models.risk import RiskModel
from forewarn.offline.measures import (
    Act,
    LeadTime,
    Measures,
    SampledMeasures,
    Sweep,
    at_most,
    coverage_on_curve,
    followed_by,
    friction_sweep,
    measure,
    on_errors_baseline,
    random_baseline,
    roc_auc,
    sampled,
    threshold_crossings,
)
from forewarn.offline.replay import Replay, replay
from forewarn.offline.training import churn_times
from forewarn.pipeline.learner import ContactLearner, LearnerSettings
from forewarn.pipeline.results import ScoredEvent
from forewarn.rules.rulebook import Rulebook, load_rulebook

FRICTION_THRESHOLD = 60.0


class _Report(BaseModel):
    model_config = ConfigDict(frozen=True)


class History(_Report):
    events: int
    customers: int
    days: float
    support_contacts: int
    churners: int
    #: "given", or "assumed: every channel consented" for history without profiles
    profiles: str


class RuleMeasures(Measures):
    customers_reached: int
    #: suppression reason -> decisions it stopped
    suppressed: dict[str, int]


class FrictionAlone(_Report):
    """Acting whenever friction crosses ``threshold`` upward, without rules."""

    roc_auc_contact_within_window: float | None
    threshold: float
    actions: int
    contact_coverage: float
    lead_time_minutes: LeadTime
    outreach_precision: float
    actions_per_1000_customers_per_day: float


class ChurnModelQuality(_Report):
    version: str
    roc_auc_churn_within_14_days: float | None
    held_out_at_training: dict[str, Any]


class LearnedModel(_Report):
    """One fit of the stream learner during the replay."""

    version: str
    fitted_at: str
    serves_from: str
    accepted: bool
    reason: str
    roc_auc_on_judging_rows: float


class FrictionCurve(_Report):
    """Coverage as a friction threshold moves, in the table's units, and where the rulebook
    sits against it at its own volume."""

    thresholds: list[float]
    actions_per_1000_customers_per_day: list[float]
    contact_coverage: list[float]
    #: the curve's coverage at the rulebook's volume (interpolated; None outside the curve)
    at_rulebook_volume: float | None
    #: the rulebook anticipates fewer contacts than a friction threshold sending as many
    rulebook_below: bool


def friction_curve(sweep: Sweep, volume: float, coverage: float) -> FrictionCurve:
    """The curve, and whether a rulebook acting ``volume`` times per 1,000 customers a day
    with ``coverage`` sits below it."""
    at = coverage_on_curve(sweep, volume)
    return FrictionCurve(
        thresholds=sweep.thresholds,
        actions_per_1000_customers_per_day=sweep.actions_per_1000_customers_per_day,
        contact_coverage=sweep.coverage,
        at_rulebook_volume=at,
        rulebook_below=at is not None and coverage < at,
    )


#: what the text report and the plot say when the rulebook sits below the curve
BELOW_THE_CURVE = "the rulebook sits below the friction-threshold curve at equal volume"


class BeatsBaselines(_Report):
    coverage_above_random: bool
    coverage_at_least_on_errors_at_equal_volume: bool
    precision_above_on_errors: bool


class EvaluationReport(Measures):
    """The rulebook's measures, and everything to judge them by."""

    history: History
    rulebook_version: str
    model_version: str | None
    window_hours: float
    by_rule: dict[str, RuleMeasures]
    #: the sampled ones (at equal volume, random) as the mean over their draws
    baselines: dict[str, SampledMeasures | Measures]
    friction_alone: FrictionAlone
    friction_curve: FrictionCurve
    churn_model: ChurnModelQuality | None = None
    beats_baselines: BeatsBaselines
    #: where the measures start (events before it only build state and train)
    measured_from: str | None = None
    #: how the contact risk was scored: "stream-learned", "offline model <version>" or "none"
    contact_risk: str = "none"
    #: with stream learning: every fit, accepted or refused
    learned_models: list[LearnedModel] = []
    #: the same rulebook with the contact risk scored another way (learned vs offline)
    variants: dict[str, Measures] = {}

    def to_json(self) -> dict[str, Any]:
        """The report as written to ``--report`` (no ``churn_model`` without a model)."""
        data: dict[str, Any] = self.model_dump(mode="json")
        if self.churn_model is None:
            del data["churn_model"]
        return data


def evaluate(
    events: Sequence[JourneyEvent],
    profiles: Sequence[CustomerProfile] | None = None,
    *,
    rulebook: Rulebook | None = None,
    churn: RiskModel | None = None,
    window_hours: float = 24.0,
    seed: int = 7,
    plot: Path | None = None,
    contact: RiskModel | None = None,
    learning: LearnerSettings | None = None,
    measure_from: datetime | None = None,
) -> EvaluationReport:
    """Replay the history through the decision path and measure it against the baselines.

    ``learning``: learn the contact-risk model in the replay, as ``forewarn learn`` would
    beside the workers (the deployed default); ``contact``: a contact-risk model trained
    offline (with ``learning`` too, the report compares them). ``measure_from``: measure only
    what happens from then on (the replay still runs through the whole history, so state
    and learning start where they would have been)."""
    book = rulebook or load_rulebook()

    def run(learn: bool) -> Replay:
        return replay(
            events, profiles, rulebook=book, churn=churn,
            contact=None if learn else contact,
            learner=ContactLearner(learning) if learn and learning is not None else None,
        )  # fmt: skip

    learned = learning is not None and contact is None
    out = run(learned)
    since = -math.inf if measure_from is None else measure_from.timestamp()
    window = window_hours * 3600
    flat = [(e.customer_id, t, e.type) for e in events if (t := e.occurred_at.timestamp()) >= since]
    contacts = [(c, t) for c, t, k in flat if k == "support_contact"]
    churns = [(c, t) for c, t in churn_times(events).items() if t >= since]
    customers = len({c for c, _, _ in flat})
    days = max((flat[-1][1] - flat[0][1]) / 86400, 1 / 24) if flat else 1.0
    acts = _acts(out, since)

    def m(actions: list[Act], any_retains: bool = False) -> Measures:
        return measure(
            contacts, churns, actions, customers=customers, days=days, window=window,
            any_action_retains=any_retains,
        )  # fmt: skip

    def by_rule(rule_id: str) -> RuleMeasures:
        mine = [a for a in acts if a[2] == rule_id]
        suppressed = Counter(
            d.suppressed_by.value
            for d in out.decisions
            if d.rule_id == rule_id
            and d.suppressed_by is not None
            and d.action.triggered_at.timestamp() >= since
        )
        return RuleMeasures(
            **m(mine).model_dump(),
            customers_reached=len({a[0] for a in mine}),
            suppressed=dict(sorted(suppressed.items())),
        )

    overall = m(acts)
    scored = [x for x in out.scored if x.at >= since]
    errors = on_errors_baseline(flat)
    baselines = {
        "on_errors": m(errors, any_retains=True),
        "on_errors at equal volume": sampled(
            lambda i: m(at_most(errors, len(acts), seed + i), any_retains=True)
        ),
        "random": sampled(
            lambda i: m(random_baseline(flat, len(acts), seed + i), any_retains=True)
        ),
    }
    label = followed_by(scored, contacts, window)
    friction = m(threshold_crossings(scored, FRICTION_THRESHOLD)).model_dump(
        exclude={"churn_capture"}
    )
    sweep = friction_sweep(scored, contacts, customers, days, window)
    quality = None
    if churn is not None:
        churned = followed_by(scored, churns, 14 * 86400)
        quality = ChurnModelQuality(
            version=churn.version,
            roc_auc_churn_within_14_days=_round(
                roc_auc([s.churn_risk or 0.0 for s in scored], churned)
            ),
            held_out_at_training=churn.card.held_out.model_dump(exclude={"calibration"}),
        )
    variants: dict[str, Measures] = {}
    if learning is not None and contact is not None:
        variants["stream-learned contact risk"] = m(_acts(run(True), since))
    described = (
        "stream-learned" if learned else f"offline model {contact.version}" if contact else "none"
    )
    report = EvaluationReport(
        **overall.model_dump(),
        history=History(
            events=len(events),
            customers=customers,
            days=round(days, 2),
            support_contacts=len(contacts),
            churners=len(churns),
            profiles="assumed: every channel consented" if out.assumed_consent else "given",
        ),
        rulebook_version=book.version,
        model_version=churn.version if churn else None,
        window_hours=window_hours,
        by_rule={r.id: by_rule(r.id) for r in book.rules},
        baselines=baselines,
        friction_alone=FrictionAlone(
            roc_auc_contact_within_window=_round(roc_auc([s.friction for s in scored], label)),
            threshold=FRICTION_THRESHOLD,
            **friction,
        ),
        friction_curve=friction_curve(
            sweep, overall.actions_per_1000_customers_per_day, overall.contact_coverage
        ),
        churn_model=quality,
        beats_baselines=BeatsBaselines(
            coverage_above_random=overall.contact_coverage > baselines["random"].contact_coverage,
            coverage_at_least_on_errors_at_equal_volume=overall.contact_coverage
            >= baselines["on_errors at equal volume"].contact_coverage,
            precision_above_on_errors=overall.outreach_precision
            > baselines["on_errors"].outreach_precision,
        ),
        measured_from=None if measure_from is None else measure_from.isoformat(),
        contact_risk=described,
        learned_models=[_learned(r) for r in out.releases],
        variants=variants,
    )
    if plot is not None:
        plot_evaluation(plot, report, scored, label, sweep)
    return report


def plot_evaluation(
    path: Path,
    report: EvaluationReport,
    scored: Sequence[ScoredEvent],
    label: Sequence[int],
    sweep: Sweep,
) -> None:
    """The ``--plot`` picture: the rulebook and the baselines as points on the friction
    curve, in the table's units, and the report's words when the rulebook sits below it."""
    from forewarn.offline.plots import plot_report

    points = {
        name: (r.actions_per_1000_customers_per_day, r.contact_coverage)
        for name, r in (("rulebook", report), *report.baselines.items())
    }
    below = BELOW_THE_CURVE if report.friction_curve.rulebook_below else None
    plot_report(path, scored, label, sweep, points, below)


def _learned(r: ModelRelease) -> LearnedModel:
    return LearnedModel(
        version=r.model_version,
        fitted_at=r.fitted_at.isoformat(),
        serves_from=r.serves_from.isoformat(),
        accepted=r.verdict.accepted,
        reason=r.verdict.reason,
        roc_auc_on_judging_rows=r.card.held_out.roc_auc,
    )


def _acts(out: Replay, since: float) -> list[Act]:
    return [
        (a.customer_id, t, a.rule_id, a.playbook)
        for a in out.actions
        if (t := a.triggered_at.timestamp()) >= since
    ]


def _round(v: float | None) -> float | None:
    return None if v is None else round(v, 4)


def format_report(report: EvaluationReport) -> str:
    """The report as a table for people."""
    rows: list[tuple[str, Measures | FrictionAlone]] = [("rulebook", report)]
    rows += [(f"  {rule}", r) for rule, r in report.by_rule.items()]
    rows += [(f"with {k}", v) for k, v in report.variants.items()]
    rows += [(f"baseline {k}", v) for k, v in report.baselines.items()]
    fa = report.friction_alone
    rows += [(f"friction >= {fa.threshold:g} alone", fa)]
    width = max(26, *(len(name) + 1 for name, _ in rows))  # the columns line up
    head = (
        f"{'':<{width}}{'actions':>8}{'coverage':>10}{'lead min':>10}{'precision':>11}"
        f"{'per 1k/day':>12}{'churn capt.':>13}"
    )
    lines = [head]
    for name, r in rows:
        lead = r.lead_time_minutes.median
        capture = r.churn_capture if isinstance(r, Measures) else None
        lines.append(
            f"{name:<{width}}{r.actions:>8}{r.contact_coverage:>10.1%}"
            f"{'-' if lead is None else f'{lead:.0f}':>10}{r.outreach_precision:>11.1%}"
            f"{r.actions_per_1000_customers_per_day:>12.1f}"
            f"{'-' if capture is None else f'{capture:.1%}':>13}"
        )
    h = report.history
    lines.append(
        f"\n{h.events:,} events, {h.customers:,} customers, {h.days} days, "
        f"{h.support_contacts:,} support contacts, {h.churners:,} churners; "
        f"friction ROC AUC for a contact within {report.window_hours:g} h: "
        f"{fa.roc_auc_contact_within_window}"
    )
    lines.append(_against_the_curve(report))
    drawn = {k: v for k, v in report.baselines.items() if isinstance(v, SampledMeasures)}
    if drawn:
        lines.append(
            f"sampled baselines are the mean of {next(iter(drawn.values())).draws} draws; "
            "a single draw covers "
            + ", ".join(
                f"{v.contact_coverage_p5:.1%}-{v.contact_coverage_p95:.1%} ({k})"
                for k, v in drawn.items()
            )
            + " (5th-95th percentile)"
        )
    if report.measured_from is not None:
        lines.append(f"measured from {report.measured_from} (earlier events build state only)")
    lines.append(f"contact risk: {report.contact_risk}")
    if report.learned_models:
        accepted = [m for m in report.learned_models if m.accepted]
        lines.append(
            f"stream learner: {len(report.learned_models)} fits, {len(accepted)} accepted"
            + (f", last {accepted[-1].version} serving from {accepted[-1].serves_from}"
               if accepted else "")
        )  # fmt: skip
    if report.churn_model is not None:
        cm = report.churn_model
        lines.append(
            f"churn model {cm.version}: ROC AUC for churn within 14 days of an event "
            f"{cm.roc_auc_churn_within_14_days}"
        )
    return "\n".join(lines)


def _against_the_curve(report: EvaluationReport) -> str:
    """Where the rulebook sits against the friction-threshold curve at its own volume."""
    curve, volume = report.friction_curve, report.actions_per_1000_customers_per_day
    at, mine = curve.at_rulebook_volume, report.contact_coverage
    if at is None:
        return (
            f"the friction-threshold curve does not reach the rulebook's volume ({volume:.1f} "
            "actions per 1,000 customers a day): no comparison at equal volume"
        )
    if curve.rulebook_below:
        return (
            f"{BELOW_THE_CURVE}: a friction threshold sending as many actions ({volume:.1f} "
            f"per 1,000 customers a day) anticipates {at:.1%} of contacts, the rulebook {mine:.1%}"
        )
    return (
        f"the rulebook sits on or above the friction-threshold curve at equal volume: it "
        f"anticipates {mine:.1%} of contacts, a friction threshold sending as many actions "
        f"({volume:.1f} per 1,000 customers a day) {at:.1%}"
    )
