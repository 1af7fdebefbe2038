"""The evaluate plot and report as people read them (issue 16, point 10)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from forewarn.offline.evaluate import (
    BELOW_THE_CURVE,
    EvaluationReport,
    evaluate,
    format_report,
    friction_curve,
    plot_evaluation,
)
from forewarn.offline.measures import Sweep, coverage_on_curve
from forewarn.offline.simulator import JourneySimulator

CURVE = Sweep(thresholds=[80, 60, 40, 20], actions_per_1000_customers_per_day=[5, 20, 60, 120],
              coverage=[0.15, 0.5, 0.6, 0.85])  # fmt: skip


@pytest.fixture(scope="module")
def evaluated() -> tuple[EvaluationReport, dict[str, Any]]:
    """A small history evaluated with a plot, and what the plot was given."""
    sim = JourneySimulator(200, seed=5, start=datetime(2026, 3, 1, tzinfo=UTC),
                           span=timedelta(days=3))  # fmt: skip
    given: dict[str, Any] = {}
    with pytest.MonkeyPatch.context() as mp:
        from forewarn.offline import plots

        names = ("path", "scored", "label", "sweep", "points", "below")
        mp.setattr(plots, "plot_report", lambda *a: given.update(zip(names, a, strict=True)))
        report = evaluate(list(sim.events()), sim.profiles(), plot=Path("unused.png"))
    return report, given


def test_the_coverage_panel_uses_the_tables_units(
    evaluated: tuple[EvaluationReport, dict[str, Any]],
) -> None:
    """Actions per 1,000 customers a day, as the table's "per 1k/day" column: the curve's
    point at friction 60 is the table's "friction >= 60 alone" row."""
    report, given = evaluated
    curve, alone = report.friction_curve, report.friction_alone
    at = curve.thresholds.index(alone.threshold)
    assert curve.actions_per_1000_customers_per_day[at] == alone.actions_per_1000_customers_per_day
    assert curve.contact_coverage[at] == alone.contact_coverage
    assert alone.actions_per_1000_customers_per_day > 1, "not actions per customer"
    assert given["sweep"].actions_per_1000_customers_per_day == (
        curve.actions_per_1000_customers_per_day
    )
    rulebook = (report.actions_per_1000_customers_per_day, report.contact_coverage)
    assert given["points"]["rulebook"] == rulebook
    for name, measures in report.baselines.items():
        assert given["points"][name][0] == measures.actions_per_1000_customers_per_day

    from forewarn.offline.plots import figure

    fig = figure(given["scored"], given["label"], given["sweep"], given["points"])
    assert fig.axes[-1].get_xlabel() == "actions per 1,000 customers a day"


def test_the_curve_at_the_rulebooks_volume() -> None:
    assert coverage_on_curve(CURVE, 20) == 0.5
    assert coverage_on_curve(CURVE, 40) == 0.55  # between the points
    assert coverage_on_curve(CURVE, 200) is None, "outside the curve: nothing to compare"
    below, above = friction_curve(CURVE, 20, 0.3), friction_curve(CURVE, 60, 0.68)
    assert below.rulebook_below and below.at_rulebook_volume == 0.5
    assert not above.rulebook_below
    assert not friction_curve(CURVE, 200, 0.0).rulebook_below


def _with_curve(report: EvaluationReport, volume: float, coverage: float) -> EvaluationReport:
    return report.model_copy(update={
        "actions_per_1000_customers_per_day": volume,
        "contact_coverage": coverage,
        "friction_curve": friction_curve(CURVE, volume, coverage),
    })  # fmt: skip


def test_the_text_report_says_when_the_rulebook_sits_below_the_curve(
    evaluated: tuple[EvaluationReport, dict[str, Any]],
) -> None:
    report, _ = evaluated
    below = format_report(_with_curve(report, 20, 0.3))
    assert (
        f"{BELOW_THE_CURVE}: a friction threshold sending as many actions (20.0 per 1,000 "
        "customers a day) anticipates 50.0% of contacts, the rulebook 30.0%"
    ) in below
    above = format_report(_with_curve(report, 60, 0.68))
    assert BELOW_THE_CURVE not in above and "below" not in above
    assert "on or above the friction-threshold curve at equal volume" in above
    outside = format_report(_with_curve(report, 200, 0.1))
    assert "below" not in outside and "no comparison at equal volume" in outside
    # the report's own verdict is printed, whichever it is
    assert format_report(report).count("friction-threshold curve") == 1


def test_the_plot_says_so_too(
    evaluated: tuple[EvaluationReport, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The plot gets the report's words exactly when the report says them."""
    from forewarn.offline import plots

    report, given = evaluated
    assert (given["below"] == BELOW_THE_CURVE) == report.friction_curve.rulebook_below
    told: list[str | None] = []
    monkeypatch.setattr(plots, "plot_report", lambda *a: told.append(a[-1]))
    for volume, coverage in ((20, 0.3), (60, 0.68)):
        plot_evaluation(Path("unused.png"), _with_curve(report, volume, coverage),
                        given["scored"], given["label"], CURVE)  # fmt: skip
    assert told == [BELOW_THE_CURVE, None]

    def texts(below: str | None) -> str:
        fig = plots.figure(given["scored"], given["label"], CURVE, {"rulebook": (20, 0.3)}, below)
        return " ".join(t.get_text().replace("\n", " ") for t in fig.axes[-1].texts)

    assert BELOW_THE_CURVE in texts(BELOW_THE_CURVE)
    assert BELOW_THE_CURVE not in texts(None)
