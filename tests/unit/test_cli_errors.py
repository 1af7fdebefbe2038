"""Errors become exit codes in one place, and every command honours FOREWARN_LOG_LEVEL."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

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
