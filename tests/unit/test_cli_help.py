"""Each long-running command's --help lists the settings it reads, with their defaults."""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from forewarn.cli.main import parser
from forewarn.models.contracts import SuppressionReason
from forewarn.streams.settings import COMMAND_SETTINGS, UNLISTED_SETTINGS, Settings


def help_of(command: str, capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit):
        parser().parse_args([command, "--help"])
    return capsys.readouterr().out


@pytest.mark.parametrize(
    ("command", "shown"),
    [
        ("score", ["FOREWARN_BOOTSTRAP_SERVERS=127.0.0.1:9092", "FOREWARN_BATCH_SIZE=500",
                   "FOREWARN_INSTANCE_ID=(the host name)", "FOREWARN_TOPICS__PARTITIONS=6",
                   "FOREWARN_KAFKA__SASL_PASSWORD=(unset)", "FOREWARN_EXACTLY_ONCE=true"]),
        ("learn", ["FOREWARN_LEARNER__HORIZON_MINUTES=30.0", "FOREWARN_HTTP_PORT=9464"]),
        ("feedback", ["FOREWARN_FEEDBACK_HTTP_PORT=9465", "FOREWARN_FEEDBACK__GROUP_ID=forewarn-"
                      "feedback", "FOREWARN_STATE_DIR=(unset)"]),
    ],
)  # fmt: skip
def test_help_lists_the_settings_with_their_defaults(
    command: str, shown: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    text = help_of(command, capsys)
    for line in shown:
        assert line in text


def test_every_setting_is_listed_by_a_command_that_reads_it() -> None:
    listed = {name for names in COMMAND_SETTINGS.values() for name in names}
    assert set(Settings.model_fields) - listed == UNLISTED_SETTINGS


def _commands() -> dict[str, argparse.ArgumentParser]:
    sub = next(a for a in parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


@pytest.mark.parametrize("command", sorted(_commands()))
def test_every_commands_help_lists_the_settings_it_reads(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    text = help_of(command, capsys)
    assert "settings (environment variables, with their defaults):" in text
    assert "FOREWARN_LOG_LEVEL=INFO" in text  # every command reads it
    for name in COMMAND_SETTINGS.get(command, ()):
        if name not in ("log_level", "instance_id"):
            assert f"FOREWARN_{name.upper()}" in text, name


@pytest.mark.parametrize("command", ["topics", "tail", "simulate"])
def test_the_kafka_commands_list_their_connection(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    text = help_of(command, capsys)
    assert "FOREWARN_BOOTSTRAP_SERVERS=127.0.0.1:9092" in text
    assert "FOREWARN_CONNECT_TIMEOUT_SECONDS=5.0" in text


@pytest.mark.parametrize("command", ["demo", "simulate", "evaluate", "topics", "tail"])
def test_every_option_says_what_it_does_and_its_default(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    for action in _commands()[command]._actions:
        assert action.help, f"{command} {action.dest} has no help"
    text = help_of(command, capsys)
    if command == "demo":
        assert "seconds of simulated traffic (default: 60)" in text
    if command == "simulate":
        assert "(default: 1000)" in text and "(default: 500)" in text


def test_the_top_level_help_is_plain_words(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parser().parse_args(["--help"])
    text = capsys.readouterr().out
    assert "``" not in text and "`" not in text
    assert "forewarn.streams" not in text, "no Python module names"
    assert "--version" in text


README = Path(__file__).resolve().parents[2] / "README.md"


def test_the_readmes_rule_test_cases_run_and_list_every_reason(tmp_path: Path) -> None:
    """The README's example of a NAME.tests.yaml is a file that passes on the shipped
    rulebook, and it lists every suppression reason id."""
    text = README.read_text()
    section = text.split("### Testing rules", 1)[1].split("\n## ", 1)[0]
    example = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    cases = tmp_path / "readme.tests.yaml"
    cases.write_text(example)
    command = [sys.executable, "-m", "forewarn.cli", "rules", "test", "--cases", str(cases)]
    r = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "2 passed, 0 failed" in r.stdout
    for reason in SuppressionReason:
        assert f"`{reason.value}`" in section, reason


def test_the_readme_says_how_to_run_forewarn() -> None:
    text = README.read_text()
    start = text.split("## Command line", 1)[1][:600]
    assert ".venv/bin/forewarn" in start and "source .venv/bin/activate" in start
    assert "make shell" in text.split("## How it flows", 1)[0]


def _readme_commands() -> list[str]:
    """Every ``forewarn ...`` command in the README's shell examples, as written."""
    text = README.read_text()
    commands = []
    for block in text.split("```sh\n")[1:]:
        body = block.split("```", 1)[0].replace("\\\n", " ")
        for line in body.splitlines():
            for part in line.split("#", 1)[0].split("&&"):
                words = shlex.split(part)
                while words and "=" in words[0] and words[0].split("=")[0].isupper():
                    words.pop(0)  # VAR=value before the command
                if words[:1] == ["forewarn"]:
                    commands.append(shlex.join(words))
    return commands


def test_the_readme_has_command_examples() -> None:
    assert len(_readme_commands()) > 20


@pytest.mark.parametrize("command", _readme_commands())
def test_every_readme_command_example_parses(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Every example's command and options exist, as ``forewarn COMMAND --help`` lists them."""
    try:
        parser().parse_args(shlex.split(command)[1:])
    except SystemExit as e:
        pytest.fail(f"{command}: {capsys.readouterr().err.strip()} (exit {e.code})")
