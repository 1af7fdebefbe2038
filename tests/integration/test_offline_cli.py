"""train -> evaluate -> replay from the command line, on small generated histories."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from forewarn.models.contracts import Decision, OutreachAction
from forewarn.models.releases import ModelRelease
from forewarn.models.risk import load_risk_model
from forewarn.offline.measures import BASELINE_DRAWS

pytestmark = pytest.mark.integration


def forewarn(*args: str | Path | int) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "forewarn.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_train_then_evaluate_then_replay(tmp_path: Path) -> None:
    train, held = tmp_path / "train.jsonl", tmp_path / "eval.jsonl"
    for path, seed, days, n in ((train, 41, 18, 500), (held, 43, 5, 300)):
        r = forewarn("simulate", "--out", path, "--days", days, "--customers", n, "--seed", seed,
                     "--start", "2026-05-01T00:00:00+00:00")  # fmt: skip
        assert r.returncode == 0, r.stderr

    model = tmp_path / "model"
    r = forewarn("train", "--events", train, "--out", model, "--horizon-days", 7,
                 "--version", "churn-e2e")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "held out" in r.stdout and "ROC AUC" in r.stdout
    assert load_risk_model(model).version == "churn-e2e"

    report, plot = tmp_path / "report.json", tmp_path / "plot.png"
    r = forewarn("evaluate", "--events", held, "--model", model, "--report", report,
                 "--plot", plot)  # fmt: skip
    assert r.returncode == 0, r.stderr
    rep = json.loads(report.read_text())
    measures = ("contact_coverage", "lead_time_minutes", "outreach_precision",
                "actions_per_1000_customers_per_day", "churn_capture")  # fmt: skip
    for section in (rep, *rep["by_rule"].values(), *rep["baselines"].values()):
        assert all(k in section for k in measures)
        assert set(section["lead_time_minutes"]) == {"median", "p10", "p90"}
    assert set(rep["baselines"]) == {"on_errors", "on_errors at equal volume", "random"}
    equal = rep["baselines"]["on_errors at equal volume"]["actions"]
    assert equal == min(rep["actions"], rep["baselines"]["on_errors"]["actions"])
    assert rep["model_version"] == "churn-e2e"
    assert rep["baselines"]["random"]["actions"] == rep["actions"] > 0
    assert rep["history"]["support_contacts"] > 0
    assert 0.5 < rep["friction_alone"]["roc_auc_contact_within_window"] <= 1
    assert sum(r["actions"] for r in rep["by_rule"].values()) == rep["actions"]
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "baseline on_errors" in r.stdout and "coverage" in r.stdout
    assert f"sampled baselines are the mean of {BASELINE_DRAWS} draws" in r.stdout
    assert rep["baselines"]["random"]["draws"] == BASELINE_DRAWS

    out = tmp_path / "replay"
    r = forewarn("replay", "--events", held, "--model", model, "--out", out)
    assert r.returncode == 0, r.stderr
    actions = [OutreachAction.model_validate_json(x) for x in (out / "actions.jsonl").open("rb")]
    decisions = [Decision.model_validate_json(x) for x in (out / "decisions.jsonl").open("rb")]
    assert len(actions) == rep["actions"], "replay and evaluate run the same path"
    assert len(decisions) >= len(actions)
    assert {a.model_version for a in actions} == {"churn-e2e"}


def test_bad_history_and_bad_models_are_refused_with_file_and_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"event_id": "e1", "customer_id": "c", "type": "page_view"}\n')
    r = forewarn("replay", "--events", bad, "--out", tmp_path / "o")
    assert r.returncode == 2 and f"{bad}:1: occurred_at: Field required" in r.stderr
    r = forewarn("evaluate", "--events", bad, "--model", tmp_path, "--report", tmp_path / "r")
    assert r.returncode == 2 and "no model card" in r.stderr


def test_contact_risk_offline_against_learned_measured_from_a_time_on(tmp_path: Path) -> None:
    history = tmp_path / "h.jsonl"
    r = forewarn("simulate", "--out", history, "--days", 6, "--customers", 300, "--seed", 47,
                 "--start", "2026-05-01T00:00:00+00:00")  # fmt: skip
    assert r.returncode == 0, r.stderr
    model, cut = tmp_path / "contact", "2026-05-04T00:00:00+00:00"
    r = forewarn("train", "--target", "contact", "--events", history, "--out", model,
                 "--horizon-hours", "0.5", "--holdout-from", cut,
                 "--version", "contact-e2e")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "friction alone" in r.stdout
    card = load_risk_model(model, target="contact").card
    assert card.label.horizon_days == 0.5 / 24 and card.held_out.rows > 0

    report = tmp_path / "r.json"
    r = forewarn("evaluate", "--events", history, "--contact-model", model, "--from", cut,
                 "--report", report)  # fmt: skip
    assert r.returncode == 0, r.stderr
    rep = json.loads(report.read_text())
    assert rep["contact_risk"] == "offline model contact-e2e"
    assert rep["measured_from"] == cut
    assert set(rep["variants"]) == {"stream-learned contact risk"}
    assert rep["learned_models"] == [], "the offline model scored the main run"
    events = [json.loads(x) for x in history.open()]
    after = [e for e in events if e["occurred_at"] >= "2026-05-04T00:00:00"]
    assert rep["history"]["support_contacts"] == sum(e["type"] == "support_contact" for e in after)
    assert "with stream-learned contact risk" in r.stdout

    out = tmp_path / "replay"
    r = forewarn("replay", "--events", history, "--out", out)
    assert r.returncode == 0, r.stderr
    fits = [ModelRelease.model_validate_json(x) for x in (out / "models.jsonl").open("rb")]
    assert [f.fitted_at.day for f in fits] == [2, 3, 4, 5, 6], "a fit a day, accepted or not"
    assert "fits" in r.stdout


def test_evaluate_respond_closes_the_loop_with_the_effects_given(tmp_path: Path) -> None:
    from forewarn.rules.rulebook import default_rulebook_path, with_rule_holdouts

    history = tmp_path / "h.jsonl"
    r = forewarn("simulate", "--out", history, "--days", 5, "--customers", 400, "--seed", 8,
                 "--start", "2026-05-01T00:00:00+00:00")  # fmt: skip
    assert r.returncode == 0, r.stderr
    rules = tmp_path / "holdouts.yaml"
    rules.write_text(with_rule_holdouts(default_rulebook_path().read_text(), 30))
    report = tmp_path / "r.json"
    r = forewarn("evaluate", "--events", history, "--rules", rules, "--report", report,
                 "--no-learning", "--respond", "--effect", "payment_recovery=1.0",
                 "--effect", "checkout_assist=0")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "what outreach changed" in r.stdout
    loop = json.loads(report.read_text())["closed_loop"]
    truth = {x["rule_id"]: x["true_contact_effect"] for x in loop["rules"]}
    assert truth["payment_recovery"] == 1.0 and truth["checkout_assist"] == 0.0
    assert truth["delivery_apology"] == 0.35  # the simulator's own where none is given
    assert loop["prevented"].get("payment_recovery", 0) > 0
    assert "checkout_assist" not in loop["prevented"]

    r = forewarn("evaluate", "--events", history, "--report", report, "--no-learning",
                 "--respond")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "holds nobody out" in r.stdout
    assert json.loads(report.read_text())["closed_loop"] is None
    r = forewarn("evaluate", "--events", history, "--report", report, "--respond",
                 "--effect", "payment_recovery")  # fmt: skip
    assert r.returncode == 2 and "give playbook=CONTACT" in r.stderr
