"""``forewarn rules backtest``: a rulebook on history, rule by rule, against the one deployed.

>>> from datetime import UTC, datetime, timedelta
>>> from forewarn.offline.simulator import JourneySimulator
>>> from forewarn.rules.rulebook import load_rulebook
>>> sim = JourneySimulator(40, seed=3, start=datetime(2026, 1, 1, tzinfo=UTC),
...                        span=timedelta(days=2))
>>> book = load_rulebook()
>>> result = backtest(book, list(sim.events()), sim.profiles(), deployed=book)
>>> result.change.actions
0
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict

from forewarn.models.contracts import CustomerProfile, JourneyEvent
from forewarn.models.risk import RiskModel
from forewarn.offline.evaluate import RuleMeasures, evaluate
from forewarn.offline.measures import Measures
from forewarn.rules.rulebook import Rulebook


class Change(BaseModel):
    """The candidate minus the deployed rulebook."""

    model_config = ConfigDict(frozen=True)

    actions: int
    contact_coverage: float
    outreach_precision: float


class Backtest(BaseModel):
    model_config = ConfigDict(frozen=True)

    rulebook_version: str
    overall: Measures
    rules: dict[str, RuleMeasures]
    deployed: Backtest | None = None
    change: Change | None = None

    def to_json(self) -> dict[str, Any]:
        """As written to ``--report`` (no ``deployed`` or ``change`` without a deployed book)."""
        data: dict[str, Any] = self.model_dump(mode="json", exclude_none=False)
        for key in ("deployed", "change"):
            if data[key] is None:
                del data[key]
        if self.deployed is not None:
            data["deployed"] = self.deployed.to_json()
        return data


def backtest(
    book: Rulebook,
    events: Sequence[JourneyEvent],
    profiles: Sequence[CustomerProfile] | None,
    *,
    churn: RiskModel | None = None,
    deployed: Rulebook | None = None,
) -> Backtest:
    """Per rule: actions, suppressions by reason, customers reached, coverage, lead time;
    and the change against the deployed rulebook when one is given."""

    def one(b: Rulebook) -> Backtest:
        report = evaluate(events, profiles, rulebook=b, churn=churn)
        overall = Measures(**report.model_dump(include=set(Measures.model_fields)))
        return Backtest(rulebook_version=b.version, overall=overall, rules=report.by_rule)

    result = one(book)
    if deployed is None:
        return result
    before = one(deployed)
    now, was = result.overall, before.overall
    change = Change(
        actions=now.actions - was.actions,
        contact_coverage=round(now.contact_coverage - was.contact_coverage, 4),
        outreach_precision=round(now.outreach_precision - was.outreach_precision, 4),
    )
    return result.model_copy(update={"deployed": before, "change": change})


def format_backtest(result: Backtest) -> str:
    # the rule column as wide as the longest rule id: the numbers stay in their columns
    w = max([len("all rules"), *(len(rule) for rule in result.rules)]) + 2
    lines = [
        f"rulebook {result.rulebook_version}",
        f"{'rule':<{w}}{'actions':>8}{'reached':>9}{'coverage':>10}{'lead min':>10}  suppressed",
    ]
    for rule, r in result.rules.items():
        lead = r.lead_time_minutes.median
        sup = ", ".join(f"{k} {v}" for k, v in r.suppressed.items()) or "-"
        lines.append(
            f"{rule:<{w}}{r.actions:>8}{r.customers_reached:>9}"
            f"{r.contact_coverage:>10.1%}{'-' if lead is None else f'{lead:.0f}':>10}  {sup}"
        )
    o = result.overall
    lines.append(
        f"{'all rules':<{w}}{o.actions:>8}{'':>9}{o.contact_coverage:>10.1%}"
        f"{'':>10}  precision {o.outreach_precision:.1%}"
    )
    if result.change is not None and result.deployed is not None:
        c = result.change
        # differences of two shares are percentage points, not percent
        lines.append(
            f"\nagainst deployed {result.deployed.rulebook_version}: actions "
            f"{c.actions:+d}, coverage {c.contact_coverage * 100:+.1f} percentage points, "
            f"precision {c.outreach_precision * 100:+.1f} percentage points"
        )
    return "\n".join(lines)
