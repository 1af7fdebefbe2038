"""``forewarn rules lint`` and ``rules backtest`` as people read them (issue 16, point 10)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

LONG = "payment_recovery_for_customers_with_more_trouble"
RULEBOOK = f"""version: "mine-1"
rules:
  - id: {LONG}
    triggers: {{events: [payment_failed]}}
    require: {{friction_at_least: 45}}
    action: {{playbook: payment_recovery, channels: [push, email], template: t1, priority: 90}}
"""


def forewarn(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "forewarn.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300, check=False)  # fmt: skip


def test_one_rule_is_one_rule(tmp_path: Path) -> None:
    (tmp_path / "mine.yaml").write_text(RULEBOOK)
    r = forewarn(tmp_path, "rules", "lint", "mine.yaml")
    assert r.returncode == 0, r.stderr
    assert "rulebook mine-1, 1 rule, no problems" in r.stdout


def test_backtest_columns_hold_for_long_rule_ids_and_changes_are_points(tmp_path: Path) -> None:
    (tmp_path / "mine.yaml").write_text(RULEBOOK)
    made = forewarn(tmp_path, "simulate", "--out", "h.jsonl", "--customers", "200", "--days", "2")
    assert made.returncode == 0, made.stderr
    shipped = str(Path(__file__).resolve().parents[2] / "forewarn/rules/default.yaml")
    r = forewarn(tmp_path, "rules", "backtest", "mine.yaml", "--events", "h.jsonl",
                 "--deployed", shipped, "--model", "none")  # fmt: skip
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    header = next(ln for ln in lines if ln.startswith("rule "))
    row = next(ln for ln in lines if ln.startswith(LONG))
    total = next(ln for ln in lines if ln.startswith("all rules"))
    end = header.index("actions") + len("actions")
    for line in (row, total):
        assert line[end - 1].isdigit() and line[end] == " ", f"{header}\n{line}"
    change = next(ln for ln in lines if ln.startswith("against deployed"))
    assert "percentage points" in change and "%" not in change, change
