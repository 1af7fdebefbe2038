"""Long offline work says how far it got (issue 16, point 11)."""

from __future__ import annotations

import io
import subprocess
import sys
from collections.abc import Callable
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


def test_building_training_rows_reports_the_events_folded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``train``'s longest part after reading: every event through the state code."""
    from forewarn.offline import contact_risk, history, training

    path = tmp_path / "h.jsonl"
    history.write_history(path, customers=30, days=5, seed=3, start=T0)
    events = history.read_history(path)
    monkeypatch.setattr(training, "PROGRESS_EVERY", 100)
    builders: dict[str, Callable[[Callable[[int], None]], object]] = {
        "daily snapshots": lambda told: training.snapshot_dataset(
            events, horizon_days=1, on_progress=told
        ),
        "snapshots at events": lambda told: training.event_snapshot_dataset(
            events, horizon_days=1, on_progress=told
        ),
        "contact rows": lambda told: contact_risk.contact_dataset(
            events, horizon=1800, on_progress=told
        ),
    }
    for name, build in builders.items():
        told: list[int] = []
        build(told.append)
        assert len(told) >= len(events) // 100 // 2, name  # now and then, not only at the end
        assert told == sorted(told) and told[-1] == len(events), name


def _forewarn_in_process(*args: str) -> int:
    from forewarn.cli.main import main

    return main(list(args))


@pytest.mark.parametrize("target", ["churn", "contact"])
def test_train_reports_its_progress(
    target: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from forewarn.offline import history

    path = tmp_path / "h.jsonl"
    n, _ = history.write_history(path, customers=200, days=5, seed=47, start=T0)
    _forewarn_in_process("train", "--target", target, "--events", str(path),
                         "--out", str(tmp_path / "m"), "--horizon-days", "1",
                         "--horizon-hours", "0.5")  # fmt: skip
    # (five days of 200 customers may hold no churner to learn from: the line comes first)
    err = capsys.readouterr().err
    assert f"computing training rows: {n:,} of {n:,} events (100%)" in err, err


def test_evaluate_respond_reports_the_second_replays_progress(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from forewarn.offline import history
    from forewarn.rules.rulebook import default_rulebook_path, with_rule_holdouts

    path = tmp_path / "h.jsonl"
    n, _ = history.write_history(path, customers=100, days=2, seed=8, start=T0)
    rules = tmp_path / "holdouts.yaml"
    rules.write_text(with_rule_holdouts(default_rulebook_path().read_text(), 30))
    rc = _forewarn_in_process("evaluate", "--events", str(path), "--rules", str(rules),
                              "--report", str(tmp_path / "r.json"), "--no-learning",
                              "--respond")  # fmt: skip
    assert rc == 0
    err = capsys.readouterr().err
    assert f"replaying: {n:,} of {n:,} events (100%)" in err
    assert f"replaying with customers who respond: {n:,} of {n:,} events (100%)" in err, err
