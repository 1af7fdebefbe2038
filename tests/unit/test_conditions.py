"""CEL conditions: checked at load with the place of the mistake, evaluated per moment."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from forewarn.models.config_file import ConfigFileError
from forewarn.rules.rulebook import load_rulebook_text
from tests.unit.test_policies import Engine

T0 = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)


def book(when: str) -> str:
    return f"""version: "c"
rules:
  - id: big_failure
    triggers: {{events: [payment_failed]}}
    when: "{when}"
    action: {{playbook: p, channels: [email], template: t, priority: 90}}
    policies: {{cooldown: 0s}}
"""


@pytest.mark.parametrize(
    ("when", "problem"),
    [
        (
            "scores.frction > 40.0",
            "undefined field 'frction' not found in struct 'forewarn.Scores' (at 1:7)",
        ),
        (
            "event.value > 'big'",
            "found no matching overload for '_>_' applied to '(double, string)'",
        ),
        ("customer.tierr == 'gold'", "undefined field 'tierr'"),
        ("scores.friction", "a condition must be true or false, this one is double"),
        ("custmer.tier == 'gold'", "undeclared reference to 'custmer.tier'"),
    ],
)
def test_a_wrong_condition_is_refused_with_file_rule_and_position(when: str, problem: str) -> None:
    with pytest.raises(ConfigFileError) as e:
        load_rulebook_text(book(when), "rules/mine.yaml")
    text = str(e.value)
    assert text.startswith("rules/mine.yaml:5:11: rules.0.when:")
    assert "rule 'big_failure'" in text and problem in text


def _fires(when: str, **props: object) -> bool:
    e = Engine(book(when))
    e.profile("zoe")
    from tests.conftest import event

    evs = [
        event("zoe", "payment_failed", T0 + timedelta(minutes=i), n=i, **props) for i in range(2)
    ]
    return bool(e.feed(*evs).actions)


def test_conditions_see_the_event_the_customer_and_the_scores() -> None:
    assert _fires("event.properties['amount'] > 100.0", amount=150)
    assert not _fires("event.properties['amount'] > 100.0", amount=50)
    assert _fires(
        "'order_id' in event.properties && customer.timezone == 'Europe/Berlin'", order_id="o1"
    )
    assert _fires("customer.counts_24h['payment_failed'] >= 2 && scores.friction > 30.0")
    assert not _fires("customer.counts_24h['payment_failed'] >= 3")
    assert not _fires("scores.churn_risk >= 0.0")  # no model: churn_risk is -1


def test_a_condition_that_fails_at_run_time_counts_as_false() -> None:
    assert not _fires("event.properties['missing'] == 'x'")  # no such key: no action, no crash
