"""rules lint, test and backtest: what the owners of the rules run."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from forewarn.cli.main import main
from forewarn.offline.backtest import backtest
from forewarn.offline.rule_cases import cases_beside, run_cases
from forewarn.offline.simulator import JourneySimulator
from forewarn.rules.rulebook import default_rulebook_path, load_rulebook
from tests.conftest import POLICIES_RULEBOOK


def test_the_shipped_rulebook_passes_its_own_test_cases() -> None:
    path = default_rulebook_path()
    results = run_cases(load_rulebook(path), cases_beside(path))
    assert len(results) >= 7
    assert [r.name for r in results if not r.ok] == []


def test_a_failing_case_shows_what_was_expected_and_what_happened(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    book = tmp_path / "mine.yaml"
    book.write_text(default_rulebook_path().read_text())
    cases_beside(book).write_text("""cases:
  - name: expects an apology that the rules do not send
    profile: {consent: {email: true}}
    events: [{type: delivery_delayed, at: "2026-03-02T12:00:00Z"}]
    expect:
      actions: [{rule: delivery_apology, channel: email}]
      suppressed: [{rule: delivery_apology, reason: cooldown}]
""")
    assert main(["rules", "test", str(book)]) == 1
    out = capsys.readouterr().out
    assert "FAIL expects an apology that the rules do not send" in out
    assert "- expected delivery_apology via email" in out
    assert "- expected delivery_apology: cooldown" in out
    assert "0 passed, 1 failed" in out


def test_lint_prints_every_problem_with_its_place(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("""version: "x"
rules:
  - id: one
    triggers: {events: [payment_failed]}
    when: "scores.friction > 'high'"
    action: {playbook: p, channels: [email], template: t, priority: 900}
  - id: two
    triggers: {events: [paymnt_failed]}
    action: {playbook: p, channels: [fax], template: t, priority: 1}
""")
    assert main(["rules", "lint", str(bad)]) == 1
    err = capsys.readouterr().err
    assert f"{bad}:5:11: rules.0.when: Value error, rule 'one'" in err
    assert f"{bad}:6:69: rules.0.action.priority: Input should be less than or equal to 100" in err
    assert "rules.1.action.channels.0" in err
    assert main(["rules", "lint", str(default_rulebook_path())]) == 0


def test_backtest_reports_per_rule_and_the_change_against_the_deployed_rules() -> None:
    start = datetime(2026, 5, 1, tzinfo=UTC)
    sim = JourneySimulator(200, seed=71, start=start, span=timedelta(days=4))
    events = list(sim.events())
    new, old = load_rulebook(), load_rulebook(POLICIES_RULEBOOK)
    result = backtest(new, events, sim.profiles(), deployed=old).to_json()
    rules = result["rules"]
    assert set(rules) == {r.id for r in new.rules}
    for r in rules.values():
        assert {"actions", "customers_reached", "suppressed", "contact_coverage"} <= set(r)
        assert r["customers_reached"] <= r["actions"]
    assert result["overall"]["actions"] == sum(r["actions"] for r in rules.values())
    assert result["change"]["actions"] == (
        result["overall"]["actions"] - result["deployed"]["overall"]["actions"]
    )
    assert result["deployed"]["rulebook_version"] == old.version
