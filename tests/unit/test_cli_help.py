"""Each long-running command's --help lists the settings it reads, with their defaults."""

from __future__ import annotations

import pytest

from forewarn.cli.main import parser
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
