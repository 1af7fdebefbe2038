"""The alert rules and the dashboard, checked by Prometheus's own promtool: the rules load,
their unit tests pass (each alert fires where it should and not where it must not), every
dashboard query parses as PromQL, and both only name metrics Forewarn exports. The live
check against a real Prometheus server is tests/deploy/test_prometheus_server.py."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import ROOT

DEPLOY = ROOT / "deploy"
ALERTS = DEPLOY / "prometheus" / "alerts.yaml"
DASHBOARD = DEPLOY / "grafana" / "forewarn.json"
OPERATIONS = ROOT / "docs" / "operations.md"
#: Grafana's own variables, given a value so that promtool can parse the query
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "1m", "$__range": "1h"}


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.skip("promtool not installed (.ci/run installs Debian's prometheus package)")
    return found


def alert_rules() -> list[dict[str, Any]]:
    groups = yaml.safe_load(ALERTS.read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def dashboard_queries() -> list[str]:
    board = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in board["panels"] for t in p.get("targets", [])]


def grafana_to_promql(expr: str) -> str:
    for name, value in GRAFANA_VARIABLES.items():
        expr = expr.replace(name, value)
    return expr


def metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\bforewarn_[a-z_]+\b", expr))


def exported_metrics() -> set[str]:
    """Every series name the metrics module can export (a histogram's _bucket, _sum, _count;
    a counter's _total)."""
    source = (ROOT / "forewarn" / "streams" / "metrics.py").read_text()
    names = set(re.findall(r'"(forewarn_[a-z_]+)"', source))
    return names | {f"{n}{s}" for n in names for s in ("_bucket", "_sum", "_count")}


def test_the_alert_rules_load_and_their_unit_tests_pass() -> None:
    tool = promtool()
    check = subprocess.run([tool, "check", "rules", str(ALERTS)], capture_output=True,
                           text=True, timeout=60, check=False)  # fmt: skip
    assert check.returncode == 0, check.stdout + check.stderr
    tests = subprocess.run([tool, "test", "rules", "alerts.test.yaml"], cwd=ALERTS.parent,
                           capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert tests.returncode == 0, tests.stdout + tests.stderr
    tested = set(re.findall(r"alertname: (\w+)", (ALERTS.parent / "alerts.test.yaml").read_text()))
    assert tested == {r["alert"] for r in alert_rules()}, "every alert has a unit test"


def test_every_alert_says_how_bad_what_and_where_the_runbook_is() -> None:
    headings = {
        "alert-" + m.lower()
        for m in re.findall(r"^#+ Alert: (\w+)", OPERATIONS.read_text(), re.MULTILINE)
    }
    for rule in alert_rules():
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, rule["alert"]
        notes = rule["annotations"]
        assert notes["summary"] and notes["description"], rule["alert"]
        anchor = notes["runbook_url"].split("#")[1]
        assert anchor == f"alert-{rule['alert'].lower()}"
        assert anchor in headings, f"docs/operations.md has no '### Alert: {rule['alert']}'"


def test_every_dashboard_query_parses_as_promql(tmp_path: Path) -> None:
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:panel_{i}", "expr": grafana_to_promql(e)}
                    for i, e in enumerate(dashboard_queries())
                ],
            }
        ]
    }
    path = tmp_path / "dashboard-rules.yaml"
    path.write_text(yaml.safe_dump(rules))
    check = subprocess.run([promtool(), "check", "rules", str(path)], capture_output=True,
                           text=True, timeout=60, check=False)  # fmt: skip
    assert check.returncode == 0, check.stdout + check.stderr


def test_the_dashboard_is_stable_and_asks_for_its_datasource() -> None:
    board = json.loads(DASHBOARD.read_text())
    assert board["uid"] == "forewarn-overview"
    (variable,) = [v for v in board["templating"]["list"] if v["type"] == "datasource"]
    assert variable["query"] == "prometheus"
    for panel in board["panels"]:
        for target in panel.get("targets", []):
            assert target["datasource"]["uid"] == f"${{{variable['name']}}}", panel["title"]
    titles = " ".join(p["title"] for p in board["panels"]).lower()
    for topic in ("lag", "dead letters", "actions", "suppressions", "transactions", "restor",
                  "state", "versions", "support-contact rate", "batch", "deliveries",
                  "destinations paused"):  # fmt: skip
        assert topic in titles, topic


def test_the_dashboard_and_the_alerts_name_only_metrics_forewarn_exports() -> None:
    exported = exported_metrics()
    named = set()
    for expr in dashboard_queries() + [r["expr"] for r in alert_rules()]:
        named |= metric_names(expr)
    assert named and named <= exported, sorted(named - exported)
