"""Long offline work says how far it got (issue 16, point 11)."""

from __future__ import annotations

import io
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from forewarn.cli.progress import Progress, Reported

T0 = datetime(2026, 3, 1, tzinfo=UTC)


def test_plain_lines_with_the_count_the_rate_and_the_time_left() -> None:
    out = io.StringIO()  # not a terminal: plain lines
    progress = Progress("replaying", 1000, "events", stream=out, every=0)
    items = Reported(list(range(1000)), progress)
    for start in range(0, len(items), 250):
        assert list(items[start : start + 250]) == list(range(start, min(start + 250, 1000)))
    progress.close()
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("replaying: 250 of 1,000 events (25%), ") and "left" in lines[0]
    assert lines[-1].startswith("replaying: 1,000 of 1,000 events (100%), ")
    assert "\r" not in out.getvalue()


def test_a_second_pass_is_counted_as_one() -> None:
    out = io.StringIO()
    progress = Progress("replaying", 10, "events", stream=out, every=3600)
    items = Reported(list(range(10)), progress)
    for _ in range(2):
        for start in range(0, 10, 5):
            items[start : start + 5]
    progress.close()
    assert out.getvalue().splitlines()[-1].startswith("replaying (pass 2): 10 of 10 events")


def test_replay_reports_its_progress(tmp_path: Path) -> None:
    def forewarn(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "forewarn.cli", *args], cwd=tmp_path,
                              capture_output=True, text=True, timeout=120, check=False)  # fmt: skip

    made = forewarn("simulate", "--out", "h.jsonl", "--customers", "50", "--days", "1")
    assert made.returncode == 0, made.stderr
    events = int(made.stdout.split()[1].replace(",", ""))
    r = forewarn("replay", "--events", "h.jsonl", "--out", "out", "--no-learning")
    assert r.returncode == 0, r.stderr
    assert f"replaying: {events:,} of {events:,} events (100%)" in r.stderr


def test_reading_a_history_reports_the_bytes_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from forewarn.offline import history

    path = tmp_path / "h.jsonl"
    n, _ = history.write_history(path, customers=20, days=1, seed=3, start=T0)
    monkeypatch.setattr(history, "PROGRESS_EVERY", 10)
    told: list[int] = []
    assert len(history.read_history(path, on_progress=told.append)) == n
    assert len(told) == n // 10
    assert told == sorted(told) and 0 < told[-1] <= path.stat().st_size
    out = io.StringIO()
    progress = Progress("reading h.jsonl", path.stat().st_size, "MB", stream=out, every=0,
                        shown=lambda b: f"{b / 1e6:,.1f}")  # fmt: skip
    progress.update(told[0])
    assert out.getvalue().startswith("reading h.jsonl: 0.0 of ")


def test_writing_a_history_reports_the_events_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from forewarn.offline import history

    monkeypatch.setattr(history, "PROGRESS_EVERY", 100)
    told: list[int] = []
    n, _ = history.write_history(tmp_path / "h.jsonl", customers=20, days=1, seed=3, start=T0,
                                 on_progress=told.append)  # fmt: skip
    assert told == list(range(100, n + 1, 100))
    out = io.StringIO()
    progress = Progress("writing h.jsonl", 0, "events", stream=out, every=0)
    progress.update(told[-1])
    assert out.getvalue().startswith(f"writing h.jsonl: {told[-1]:,} events, ")
    assert "%" not in out.getvalue() and "left" not in out.getvalue(), "no total: no share"
