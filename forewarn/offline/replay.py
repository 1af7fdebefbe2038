"""History through the exact streaming code path, without a broker.

``replay`` encodes every event as the worker would receive it, feeds the ``ScoringEngine`` in
batches (profiles first), with a clock that stands at each batch's latest event time, and
collects what the worker would have published. ``forewarn replay``, ``forewarn evaluate``
and (later) ``forewarn rules backtest`` are built on it.

>>> from datetime import UTC, datetime, timedelta
>>> from forewarn.offline.simulator import JourneySimulator
>>> sim = JourneySimulator(30, seed=3, start=datetime(2026, 1, 1, tzinfo=UTC),
...                        span=timedelta(days=2))
>>> out = replay(list(sim.events()), sim.profiles())
>>> out.events > 0 and all(d.action.customer_id for d in out.decisions)
True
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from forewarn.models.churn import ChurnModel
from forewarn.models.contracts import (
    ALL_CONSENT,
    CustomerProfile,
    Decision,
    JourneyEvent,
    OutreachAction,
)
from forewarn.models.friction import FrictionConfig
from forewarn.offline.measures import (
    Act,
    followed_by,
    friction_sweep,
    measure,
    on_errors_baseline,
    plot_report,
    random_baseline,
    roc_auc,
    threshold_crossings,
)
from forewarn.offline.training import churn_times
from forewarn.pipeline.codecs import RawRecord, encode
from forewarn.pipeline.engine import ScoringEngine
from forewarn.pipeline.ports import ManualClock
from forewarn.rules.rulebook import Rulebook, load_rulebook

EVENTS, PROFILES = "journey-events", "customer-profiles"


@dataclass(slots=True)
class Replay:
    events: int
    actions: list[OutreachAction] = field(default_factory=list)
    decisions: list[Decision] = field(default_factory=list)
    dead_letters: int = 0
    #: every scored event: (customer id, event time, friction, churn risk or None)
    scored: list[tuple[str, float, float, float | None]] = field(default_factory=list)
    assumed_consent: bool = False


def permissive_profiles(events: Sequence[JourneyEvent]) -> list[CustomerProfile]:
    """Profiles consenting to every channel, for history that comes without profiles."""
    return [
        CustomerProfile(customer_id=c, consent=ALL_CONSENT)
        for c in dict.fromkeys(e.customer_id for e in events)
    ]


def replay(
    events: Sequence[JourneyEvent],
    profiles: Sequence[CustomerProfile] | None = None,
    *,
    rulebook: Rulebook | None = None,
    churn: ChurnModel | None = None,
    friction: FrictionConfig | None = None,
    batch_size: int = 500,
) -> Replay:
    """What the scoring worker would have published for this history (events in time order)."""
    if not events:
        return Replay(0)
    assumed = profiles is None
    clock = ManualClock(events[0].occurred_at)
    engine = ScoringEngine(
        rulebook=rulebook or load_rulebook(), friction=friction, clock=clock, churn=churn
    )
    engine.keep_scores = True
    out = Replay(len(events), assumed_consent=assumed)
    prof = permissive_profiles(events) if profiles is None else profiles
    recs = [
        RawRecord(PROFILES, 0, i, p.customer_id.encode(), encode(p)) for i, p in enumerate(prof)
    ]
    engine.process(recs)
    for start in range(0, len(events), batch_size):
        chunk = events[start : start + batch_size]
        clock.set(max(e.occurred_at for e in chunk))
        res = engine.process(
            [
                RawRecord(EVENTS, 0, start + i, e.customer_id.encode(), encode(e))
                for i, e in enumerate(chunk)
            ]
        )
        out.actions += res.actions
        out.decisions += res.decisions
        out.dead_letters += len(res.dead_letters)
    out.scored = engine.scored
    return out


def write_replay(out: Replay, directory: Path) -> tuple[Path, Path]:
    """``actions.jsonl`` and ``decisions.jsonl`` in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    actions, decisions = directory / "actions.jsonl", directory / "decisions.jsonl"
    with actions.open("wb") as f:
        for a in out.actions:
            f.write(encode(a) + b"\n")
    with decisions.open("wb") as f:
        for d in out.decisions:
            f.write(encode(d) + b"\n")
    return actions, decisions


FRICTION_THRESHOLD = 60.0


def evaluate(
    events: Sequence[JourneyEvent],
    profiles: Sequence[CustomerProfile] | None = None,
    *,
    rulebook: Rulebook | None = None,
    churn: ChurnModel | None = None,
    window_hours: float = 24.0,
    seed: int = 7,
    plot: Path | None = None,
) -> dict[str, Any]:
    """Replay the history through the decision path and measure it against the baselines."""
    book = rulebook or load_rulebook()
    out = replay(events, profiles, rulebook=book, churn=churn)
    window = window_hours * 3600
    flat = [(e.customer_id, e.occurred_at.timestamp(), e.type) for e in events]
    contacts = [(c, t) for c, t, k in flat if k == "support_contact"]
    churns = list(churn_times(events).items())
    customers = len({c for c, _, _ in flat})
    days = max((flat[-1][1] - flat[0][1]) / 86400, 1 / 24) if flat else 1.0
    acts = [(a.customer_id, a.triggered_at.timestamp(), a.rule_id, a.playbook) for a in out.actions]

    def m(actions: list[Act], any_retains: bool = False) -> dict[str, Any]:
        return measure(
            contacts, churns, actions, customers=customers, days=days, window=window,
            any_action_retains=any_retains,
        ).as_dict()  # fmt: skip

    report: dict[str, Any] = {
        "history": {
            "events": len(events),
            "customers": customers,
            "days": round(days, 2),
            "support_contacts": len(contacts),
            "churners": len(churns),
            "profiles": "assumed: every channel consented" if out.assumed_consent else "given",
        },
        "rulebook_version": book.version,
        "model_version": churn.version if churn else None,
        "window_hours": window_hours,
        **m(acts),
        "by_rule": {
            r.id: {
                **m([a for a in acts if a[2] == r.id]),
                "customers_reached": len({a[0] for a in acts if a[2] == r.id}),
                "suppressed": dict(
                    sorted(
                        Counter(
                            d.suppressed_by.value
                            for d in out.decisions
                            if d.rule_id == r.id and d.suppressed_by is not None
                        ).items()
                    )
                ),
            }
            for r in book.rules
        },
        "baselines": {
            "on_errors": m(on_errors_baseline(flat), any_retains=True),
            "random": m(random_baseline(flat, len(acts), seed), any_retains=True),
        },
    }
    label = followed_by(out.scored, contacts, window)
    friction_acts = threshold_crossings(out.scored, FRICTION_THRESHOLD)
    report["friction_alone"] = {
        "roc_auc_contact_within_window": _round(roc_auc([s[2] for s in out.scored], label)),
        "threshold": FRICTION_THRESHOLD,
        **{k: v for k, v in m(friction_acts).items() if k != "churn_capture"},
    }
    if churn is not None:
        churned = followed_by(out.scored, churns, 14 * 86400)
        report["churn_model"] = {
            "version": churn.version,
            "roc_auc_churn_within_14_days": _round(
                roc_auc([s[3] or 0.0 for s in out.scored], churned)
            ),
            "held_out_at_training": churn.card.held_out.model_dump(exclude={"calibration"}),
        }
    base = report["baselines"]
    report["beats_baselines"] = {
        "coverage_above_random": report["contact_coverage"] > base["random"]["contact_coverage"],
        "precision_above_on_errors": (
            report["outreach_precision"] > base["on_errors"]["outreach_precision"]
        ),
    }
    if plot is not None:
        sweep = friction_sweep(out.scored, contacts, customers, window)
        per = max(customers, 1)
        points = {
            "rulebook": (len(acts) / per, report["contact_coverage"]),
            "on_errors": (
                base["on_errors"]["actions"] / per,
                base["on_errors"]["contact_coverage"],
            ),
            "random": (base["random"]["actions"] / per, base["random"]["contact_coverage"]),
        }
        plot_report(plot, out.scored, label, sweep, points)
    return report


def _round(v: float | None) -> float | None:
    return None if v is None else round(v, 4)


def format_report(report: dict[str, Any]) -> str:
    """The report as a table for people."""
    rows = [("rulebook", report)]
    rows += [(f"  {rule}", r) for rule, r in report["by_rule"].items()]
    rows += [(f"baseline {k}", v) for k, v in report["baselines"].items()]
    rows += [
        (f"friction >= {report['friction_alone']['threshold']:g} alone", report["friction_alone"])
    ]
    head = (
        f"{'':<26}{'actions':>8}{'coverage':>10}{'lead min':>10}{'precision':>11}"
        f"{'per 1k/day':>12}{'churn capt.':>13}"
    )
    lines = [head]
    for name, r in rows:
        lead = r["lead_time_minutes"]["median"]
        capture = r.get("churn_capture")
        lines.append(
            f"{name:<26}{r['actions']:>8}{r['contact_coverage']:>10.1%}"
            f"{'-' if lead is None else f'{lead:.0f}':>10}{r['outreach_precision']:>11.1%}"
            f"{r['actions_per_1000_customers_per_day']:>12.1f}"
            f"{'-' if capture is None else f'{capture:.1%}':>13}"
        )
    h = report["history"]
    lines.append(
        f"\n{h['events']:,} events, {h['customers']:,} customers, {h['days']} days, "
        f"{h['support_contacts']:,} support contacts, {h['churners']:,} churners; "
        f"friction ROC AUC for a contact within {report['window_hours']:g} h: "
        f"{report['friction_alone']['roc_auc_contact_within_window']}"
    )
    if "churn_model" in report:
        cm = report["churn_model"]
        lines.append(
            f"churn model {cm['version']}: ROC AUC for churn within 14 days of an event "
            f"{cm['roc_auc_churn_within_14_days']}"
        )
    return "\n".join(lines)
