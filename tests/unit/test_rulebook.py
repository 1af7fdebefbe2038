"""The rulebook format: loading, refusal with file/line/field, the trigger index."""

from __future__ import annotations

from pathlib import Path

import pytest

from forewarn.models.config_file import ConfigFileError
from forewarn.rules.rulebook import (
    default_rulebook_path,
    load_rulebook,
    load_rulebook_text,
    parse_duration,
)

GOOD = """\
version: "t1"
rules:
  - id: pay
    triggers: {events: [payment_failed]}
    action: {playbook: p, channels: [email], template: t, priority: 90, ttl: 2h}
    policies: {cooldown: 30m}
  - id: hot
    triggers: {events: [rage_burst], scores: {friction: 70}}
    action: {playbook: p, channels: [push, email], template: t, priority: 50}
"""


def test_the_default_rulebook_loads_with_its_seven_rules() -> None:
    book = load_rulebook()
    assert default_rulebook_path().name == "default.yaml"
    assert {r.id for r in book.rules} == {
        "payment_recovery",
        "delivery_apology",
        "checkout_assist",
        "agent_callback",
        "retention_offer",
        "first_trouble",
        "likely_contact",
    }
    assert set(book.volume_targets) == {"first_trouble", "likely_contact"}
    assert book.uses_contact_risk, "the shipped rulebook reads the learned contact risk"


def test_durations_are_parsed_to_seconds() -> None:
    book = load_rulebook_text(GOOD)
    assert book.rules[0].action.ttl == 7200
    assert book.rules[0].policies.cooldown == 1800
    assert parse_duration("1w") == 7 * 86400
    with pytest.raises(ValueError, match="duration"):
        parse_duration("soon")


def test_rules_are_indexed_by_trigger() -> None:
    book = load_rulebook_text(GOOD)
    assert [r.id for r in book.rules_for("payment_failed", (), 0, 10)] == ["pay"]
    assert book.rules_for("page_view", (), 0, 10) == []
    assert [r.id for r in book.rules_for("rage_click", ("rage_burst",), 0, 10)] == ["hot"]


def test_score_crossings_fire_only_when_crossing_upward() -> None:
    book = load_rulebook_text(GOOD)
    assert [r.id for r in book.rules_for("page_view", (), 60, 71)] == ["hot"]
    assert book.rules_for("page_view", (), 71, 80) == []  # already above
    assert book.rules_for("page_view", (), 80, 60) == []  # falling
    # an event that both triggers and crosses yields the rule once
    assert [r.id for r in book.rules_for("page_view", ("rage_burst",), 60, 71)] == ["hot"]


def _problems(text: str) -> list[str]:
    with pytest.raises(ConfigFileError) as err:
        load_rulebook_text(text, "rules/mine.yaml")
    return [str(p) for p in err.value.problems]


def test_a_bad_field_is_refused_with_file_line_and_field() -> None:
    bad = GOOD.replace("priority: 90", "priority: high")
    (msg,) = _problems(bad)
    assert msg.startswith("rules/mine.yaml:5:")
    assert "rules.0.action.priority" in msg
    assert "integer" in msg


def test_a_typo_in_a_field_name_is_refused() -> None:
    msg = "\n".join(_problems(GOOD.replace("cooldown: 30m", "cooldwn: 30m")))
    assert "rules/mine.yaml:6:" in msg
    assert "rules.0.policies.cooldwn" in msg


def test_unknown_event_types_and_channels_are_refused() -> None:
    msg = "\n".join(_problems(GOOD.replace("[payment_failed]", "[paymnet_failed]")))
    assert "paymnet_failed" in msg
    assert "custom_event_types" in msg
    ok = GOOD.replace("[payment_failed]", "[loyalty_redeemed]").replace(
        'version: "t1"', 'version: "t1"\ncustom_event_types: [loyalty_redeemed]'
    )
    assert load_rulebook_text(ok).rules[0].triggers.events == ("loyalty_redeemed",)
    assert "rules.1.action.channels.0" in "\n".join(_problems(GOOD.replace("[push,", "[pigeon,")))


def test_duplicate_rule_ids_and_empty_triggers_are_refused() -> None:
    assert "repeated: ['pay']" in "\n".join(_problems(GOOD.replace("id: hot", "id: pay")))
    no_trigger = GOOD.replace("triggers: {events: [payment_failed]}", "triggers: {}")
    assert "at least one trigger" in "\n".join(_problems(no_trigger))


def test_broken_yaml_and_missing_files_name_the_place(tmp_path: Path) -> None:
    (msg,) = _problems("version: 1\nrules: [\n")
    assert msg.startswith("rules/mine.yaml:3:")
    assert "not valid YAML" in msg
    with pytest.raises(ConfigFileError, match="cannot read"):
        load_rulebook(tmp_path / "nope.yaml")


def test_the_worker_refuses_a_bad_rulebook_at_start_naming_file_line_and_field(
    tmp_path: Path,
) -> None:
    import os
    import subprocess
    import sys

    bad = tmp_path / "rules.yaml"
    bad.write_text(GOOD.replace("ttl: 2h", "ttl: soon"))
    env = {**os.environ, "FOREWARN_RULES_PATH": str(bad), "FOREWARN_HTTP_PORT": "0",
           "FOREWARN_BOOTSTRAP_SERVERS": "127.0.0.1:1"}  # fmt: skip
    run = subprocess.run([sys.executable, "-m", "forewarn.cli", "score"], env=env,
                         capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert run.returncode == 2
    assert f"{bad}:5:" in run.stderr
    assert "rules.0.action.ttl" in run.stderr
    assert "expected a duration" in run.stderr
