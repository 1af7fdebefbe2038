"""The evaluation's sampled baselines are expectations over their draws, not one draw."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from statistics import mean

from forewarn.offline.evaluate import evaluate, format_report
from forewarn.offline.measures import (
    BASELINE_DRAWS,
    SampledMeasures,
    at_most,
    measure,
    on_errors_baseline,
    random_baseline,
)
from forewarn.offline.simulator import JourneySimulator


def test_the_sampled_baselines_are_the_mean_of_their_draws_with_the_spread_of_one() -> None:
    sim = JourneySimulator(150, seed=11, start=datetime(2026, 1, 1, tzinfo=UTC),
                           span=timedelta(days=3))  # fmt: skip
    events = list(sim.events())
    report = evaluate(events, sim.profiles(), seed=7)

    flat = [(e.customer_id, e.occurred_at.timestamp(), e.type) for e in events]
    contacts = [(c, t) for c, t, k in flat if k == "support_contact"]
    days = (flat[-1][1] - flat[0][1]) / 86400
    customers = len({c for c, _, _ in flat})
    errors = on_errors_baseline(flat)
    n = report.actions
    assert errors and n > 0
    draws = {
        "random": [random_baseline(flat, n, 7 + i) for i in range(BASELINE_DRAWS)],
        "on_errors at equal volume": [at_most(errors, n, 7 + i) for i in range(BASELINE_DRAWS)],
    }
    for name, acts in draws.items():
        got = report.baselines[name]
        assert isinstance(got, SampledMeasures) and got.draws == BASELINE_DRAWS
        one = [
            measure(contacts, [], a, customers=customers, days=days, any_action_retains=True)
            for a in acts
        ]
        coverage = [m.contact_coverage for m in one]
        assert got.contact_coverage == round(mean(coverage), 4)
        assert got.outreach_precision == round(mean(m.outreach_precision for m in one), 4)
        # single draws differ, and the mean lies inside their middle 90%
        assert min(coverage) < max(coverage)
        assert got.contact_coverage_p5 <= got.contact_coverage <= got.contact_coverage_p95
        assert got.contact_coverage_p5 < got.contact_coverage_p95
    assert report.baselines["on_errors"].actions == len(errors)
    assert not isinstance(report.baselines["on_errors"], SampledMeasures), "not sampled"
    table = format_report(report).split("\n\n")[0].splitlines()
    assert "baseline on_errors at equal volume" in table[-3]
    assert len({len(line) for line in table}) == 1, "every row's columns line up"
