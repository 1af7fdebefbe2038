"""Each volume-targeted rule's actions per day against its target, on a history.

The shipped rulebook's volume rules promise N actions per 1,000 active customers a day
(issue 11: within 20% of it every day after a warm-up, whatever the traffic does). This
replays a history as ``forewarn evaluate`` does (the shipped churn model, the stream learner
in the replay) and prints, for each day of the history but the first (the warm-up) and the
last (often partial), the actions each such rule sent over its target: N per 1,000
customers with an event that day (UTC)::

    forewarn simulate --out e.jsonl --days 14 --customers 10000 --seed 2027 \\
        --world elsewhere --start 2026-03-01T00:00:00+00:00
    .venv/bin/python bench/volumes.py e.jsonl            # --json for the table as data

A rule's days before it sends anything (its warm-up, or before its first model) print 0.00.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from forewarn.models.friction import FrictionConfig
from forewarn.models.risk import default_model_path, load_risk_model
from forewarn.offline.history import profiles_beside, read_history, read_profiles
from forewarn.offline.replay import replay
from forewarn.pipeline.learner import ContactLearner
from forewarn.rules.rulebook import load_rulebook
from forewarn.streams.settings import Settings


def daily_volumes(history: Path, rules: Path | None = None) -> dict[str, Any]:
    """Per volume rule, each full day's (date, active customers, actions, actions/target)."""
    events = read_history(history)
    beside = profiles_beside(history)
    profiles = read_profiles(beside) if beside is not None else None
    book = load_rulebook(rules)
    learning = Settings().learner.learner_settings(FrictionConfig.default().version)
    out = replay(events, profiles, rulebook=book, churn=load_risk_model(default_model_path()),
                 learner=ContactLearner(learning))  # fmt: skip
    active: dict[str, set[str]] = defaultdict(set)
    for e in events:
        active[e.occurred_at.date().isoformat()].add(e.customer_id)
    sent: dict[str, Counter[str]] = defaultdict(Counter)
    for a in out.actions:
        sent[a.rule_id][a.triggered_at.date().isoformat()] += 1
    days = sorted(active)[1:-1]
    table: dict[str, Any] = {"active": {d: len(active[d]) for d in days}, "rules": {}}
    for rule, target in book.volume_targets.items():
        table["rules"][rule] = [
            {"day": d, "actions": sent[rule][d],
             "ratio": round(sent[rule][d] / (len(active[d]) * target.per_1000_active_per_day
                                              / 1000), 2)}
            for d in days
        ]  # fmt: skip
    return table


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("history", type=Path, help="JSON Lines history (profiles beside it)")
    ap.add_argument("--rules", type=Path, help="rulebook (default: the shipped one)")
    ap.add_argument("--json", action="store_true", help="print the table as JSON")
    args = ap.parse_args(argv)
    table = daily_volumes(args.history, args.rules)
    if args.json:
        print(json.dumps(table, indent=2))
        return 0
    print("active customers " + " ".join(str(n) for n in table["active"].values()))
    for rule, days in table["rules"].items():
        ratios = " ".join(f"{d['ratio']:.2f}" for d in days)
        print(f"{rule}: actions/target {ratios}")
        print(f"{' ' * len(rule)}  actions        " + " ".join(str(d["actions"]) for d in days))
    return 0


if __name__ == "__main__":
    sys.exit(main())
