"""``bench/volumes.py``, the measure behind the README's daily volumes: each full day's
actions of a volume rule over N per 1,000 customers active that day."""

from __future__ import annotations

import sys
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

from forewarn.offline.history import write_history
from forewarn.offline.worlds import ELSEWHERE
from forewarn.rules.rulebook import load_rulebook

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))

import volumes  # noqa: E402


def test_each_full_day_is_its_actions_over_its_target(tmp_path: Path) -> None:
    history = tmp_path / "h.jsonl"
    start = datetime(2026, 3, 1, tzinfo=UTC)
    write_history(history, customers=400, days=4, seed=3, start=start, world=ELSEWHERE)
    table = volumes.daily_volumes(history)
    assert list(table["active"]) == ["2026-03-02", "2026-03-03"]  # not the first nor the last
    targets = load_rulebook().volume_targets
    assert set(table["rules"]) == set(targets)
    sent = sum(d["actions"] for days in table["rules"].values() for d in days)
    assert sent > 0, "the warm-up is over after the first day: something is sent"
    for rule, days in table["rules"].items():
        n = targets[rule].per_1000_active_per_day
        for d in days:
            assert d["ratio"] == round(d["actions"] / (table["active"][d["day"]] * n / 1000), 2)
    per_day = Counter(d["day"] for days in table["rules"].values() for d in days)
    assert set(per_day.values()) == {len(targets)}
