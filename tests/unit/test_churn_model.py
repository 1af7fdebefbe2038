"""The churn model: feature parity, the card, refusals, batch scoring, explanations."""

from __future__ import annotations

import hashlib
import json
import math
import os
import pickle
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

from forewarn.models.features import CHURN_FEATURES
from forewarn.models.friction import FrictionConfig
from forewarn.models.risk import (
    CARD_FILE,
    MODEL_FILE,
    PICKLED_MODEL_FILE,
    ArtifactError,
    RiskModel,
    default_model_path,
    load_risk_model,
)
from forewarn.offline.history import HistoryError, Mapping, file_sha256, read_history, write_history
from forewarn.offline.simulator import JourneySimulator
from forewarn.offline.training import (
    TrainingError,
    churn_times,
    event_feature_rows,
    event_snapshot_dataset,
    fit_churn_model,
    period_of,
    snapshot_dataset,
)
from forewarn.pipeline.harness import Harness

START = datetime(2026, 4, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def shipped() -> RiskModel:
    return load_risk_model(default_model_path(), FrictionConfig.default().version)


def test_the_stream_and_an_offline_replay_compute_identical_features(shipped: RiskModel) -> None:
    sim = JourneySimulator(60, seed=21, start=START, span=timedelta(days=3))
    events = list(sim.events())
    h = Harness(start=START + timedelta(days=4), churn=shipped, taps=True)
    streamed = []
    for i in range(0, len(events), 137):  # odd batch size: batches cut across customers
        features = h.feed(*events[i : i + 137]).features
        assert features is not None
        streamed.append(features)
    offline = event_feature_rows(events)
    got = np.vstack(streamed)
    assert got.shape == offline.shape == (len(events), len(CHURN_FEATURES))
    np.testing.assert_array_equal(got, offline)
    assert got[:, 1:].any(), "the features are not all zero"


def test_batch_scoring_equals_row_by_row(shipped: RiskModel) -> None:
    rows = event_feature_rows(
        list(JourneySimulator(20, seed=5, start=START, span=timedelta(days=2)).events())
    )
    batch = shipped.score(rows)
    one_by_one = np.array([shipped.score(rows[i : i + 1])[0] for i in range(len(rows))])
    np.testing.assert_allclose(batch, one_by_one, rtol=0, atol=1e-12)


def test_explanations_add_up_to_the_log_odds(shipped: RiskModel) -> None:
    rows = event_feature_rows(
        list(JourneySimulator(20, seed=6, start=START, span=timedelta(days=2)).events())
    )
    contributions, intercept = shipped.contributions(rows)
    p = shipped.score(rows)
    np.testing.assert_allclose(
        contributions.sum(axis=1) + intercept, np.log(p / (1 - p)), atol=1e-9
    )


def test_the_shipped_card_describes_the_model(shipped: RiskModel) -> None:
    card = shipped.card
    assert card.features == list(CHURN_FEATURES)
    assert card.model_version == "churn-sim-2026.11"
    assert 0.5 < card.held_out.roc_auc <= 1 and 0 <= card.held_out.brier < 0.25
    assert sum(b.n for b in card.held_out.calibration) == card.held_out.rows
    balance = card.class_balance
    assert balance.rate == pytest.approx(
        balance.positives / (balance.positives + balance.negatives), abs=1e-5
    )


def _copy(tmp_path: Path) -> Path:
    d = tmp_path / "model"
    shutil.copytree(default_model_path(), d)
    return d


def _edit_card(d: Path, **changes: object) -> None:
    card = json.loads((d / CARD_FILE).read_text())
    card.update(changes)
    (d / CARD_FILE).write_text(json.dumps(card))


def test_a_model_with_other_features_is_refused_naming_the_difference(tmp_path: Path) -> None:
    d = _copy(tmp_path)
    feats = [*CHURN_FEATURES[:-1], "shoe_size"]
    _edit_card(d, features=feats)
    with pytest.raises(ArtifactError) as e:
        load_risk_model(d)
    msg = str(e.value)
    assert str(d / CARD_FILE) in msg and "features" in msg
    assert f"missing [{CHURN_FEATURES[-1]!r}]" in msg and "unknown ['shoe_size']" in msg
    _edit_card(d, features=list(reversed(CHURN_FEATURES)))
    with pytest.raises(ArtifactError, match="another order"):
        load_risk_model(d)


def test_broken_artifacts_are_refused_with_the_file_named(tmp_path: Path) -> None:
    d = _copy(tmp_path)
    _edit_card(d, held_out={"roc_auc": "high"})
    with pytest.raises(ArtifactError, match=r"card\.json: held_out\.roc_auc"):
        load_risk_model(d)
    d = _copy(tmp_path / "2")
    (d / MODEL_FILE).write_bytes(b"not a model")
    with pytest.raises(ArtifactError, match=r"model\.json: model_sha256: .* replaced or cut short"):
        load_risk_model(d)
    with pytest.raises(ArtifactError, match="friction_version"):
        load_risk_model(_copy(tmp_path / "3"), "friction-v9")
    with pytest.raises(ArtifactError, match="no model card"):
        load_risk_model(tmp_path / "empty")


def test_training_writes_a_card_with_the_data_it_saw(tmp_path: Path) -> None:
    path = tmp_path / "h.jsonl"
    n, _ = write_history(path, customers=500, days=18, seed=31, start=START)
    events = read_history(path)
    data = snapshot_dataset(events, horizon_days=7)
    _, card = fit_churn_model(
        data, source_sha256=file_sha256(path), period=period_of(events), events=n,
        version="t1", horizon_days=7, every_hours=24, friction_version="friction-v1",
        label_definition="test",
    )  # fmt: skip
    assert card.training_data.sha256 == file_sha256(path) and card.training_data.events == n
    assert card.training_data.start == events[0].occurred_at
    assert card.class_balance.positives == int(data.y.sum()) > 0
    assert card.held_out.rows == sum(b.n for b in card.held_out.calibration)
    assert 0 <= card.held_out.precision <= 1 and 0 <= card.held_out.operating_threshold <= 1
    # every snapshot row is one customer who had not churned yet at that moment
    assert len(data.customers) == len(data.y) == len(data.x)
    assert not math.isnan(card.held_out.roc_auc)


def test_too_short_a_history_is_refused_with_the_reason() -> None:
    events = list(JourneySimulator(20, seed=1, start=START, span=timedelta(days=5)).events())
    with pytest.raises(TrainingError, match="too short"):
        snapshot_dataset(events, horizon_days=14)


def test_user_shaped_history_with_a_mapping_and_bad_rows(tmp_path: Path) -> None:
    good = tmp_path / "h.csv"
    good.write_text(
        "user_id,event_name,ts,session\n"
        "u1,pay_fail,2026-01-01 10:00:00,s1\n"
        "u1,chat_started,2026-01-01T09:00:00Z,s1\n"
    )
    m = Mapping.model_validate(
        {
            "columns": {
                "customer_id": "user_id",
                "type": "event_name",
                "occurred_at": "ts",
                "session_id": "session",
            },
            "timezone": "Europe/Berlin",
            "aliases": {"pay_fail": "payment_failed", "chat_started": "support_contact"},
        }
    )
    evs = read_history(good, m)
    assert [e.type for e in evs] == ["payment_failed", "support_contact"]  # time order
    assert evs[0].occurred_at == datetime(2026, 1, 1, 9, tzinfo=UTC)  # 10:00 Berlin
    assert read_history(good, m)[0].event_id == evs[0].event_id, "stable derived ids"
    bad = tmp_path / "bad.csv"
    bad.write_text("user_id,event_name,ts\nu1,page_view,2026-01-01\nu2,page_view,yesterday\n")
    with pytest.raises(HistoryError, match=r"bad\.csv:3: ts: not a timestamp"):
        read_history(bad, m)


def _resign(d: Path, model_text: str) -> None:
    """Write ``model_text`` as the model file and name its SHA-256 in the card."""
    (d / MODEL_FILE).write_text(model_text)
    _edit_card(d, model_sha256=hashlib.sha256(model_text.encode()).hexdigest())


class _Payload:
    """A pickle that creates a file when it is loaded (what a malicious model would do)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def test_a_malicious_model_file_is_refused_and_nothing_in_it_runs(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    payload = pickle.dumps(_Payload(marker))
    d = _copy(tmp_path / "swapped")
    (d / MODEL_FILE).write_bytes(payload)  # swapped in place of the shipped model
    with pytest.raises(ArtifactError, match=r"model\.json: model_sha256"):
        load_risk_model(d)
    d = _copy(tmp_path / "signed")  # even when the card was edited to name it
    (d / MODEL_FILE).write_bytes(payload)
    _edit_card(d, model_sha256=hashlib.sha256(payload).hexdigest())
    with pytest.raises(ArtifactError, match=r"model\.json: Invalid JSON"):
        load_risk_model(d)
    old = _copy(tmp_path / "old")  # an artifact of an earlier version: a pickle beside the card
    (old / MODEL_FILE).unlink()
    (old / PICKLED_MODEL_FILE).write_bytes(payload)
    with pytest.raises(ArtifactError, match=r"model\.joblib: a pickled model, .* `forewarn train`"):
        load_risk_model(old)
    assert not marker.exists(), "loading a model executed code from the artifact"


def test_a_truncated_or_inconsistent_model_file_is_refused_by_name(tmp_path: Path) -> None:
    d = _copy(tmp_path / "cut")
    text = (d / MODEL_FILE).read_text()
    (d / MODEL_FILE).write_text(text[: len(text) // 2])
    with pytest.raises(ArtifactError, match=r"model\.json: model_sha256"):
        load_risk_model(d)
    good = json.loads(text)
    for change, problem in (
        ({"coef": good["coef"][:-1]}, r"coef: 12 numbers for 13 features"),
        ({"scale": [0.0] * 13}, r"scale: every scale must be positive"),
        ({"mean": [float("nan")] * 13}, r"mean"),
        ({"features": list(reversed(good["features"]))}, r"model file and the card list"),
        ({"format": "pickle"}, r"format"),
    ):
        d = _copy(tmp_path / problem[:8].replace(" ", "_").replace(":", ""))
        _resign(d, json.dumps({**good, **change}))
        with pytest.raises(ArtifactError, match=problem):
            load_risk_model(d)


def test_the_shipped_model_file_is_what_its_card_names(shipped: RiskModel) -> None:
    data = (default_model_path() / MODEL_FILE).read_bytes()
    assert hashlib.sha256(data).hexdigest() == shipped.card.model_sha256


def test_snapshots_at_events_stop_at_the_churn_and_label_the_horizon() -> None:
    sim = JourneySimulator(300, seed=21, start=datetime(2026, 1, 1, tzinfo=UTC),
                           span=timedelta(days=24))  # fmt: skip
    events = list(sim.events())
    churn = churn_times(events)
    data = event_snapshot_dataset(events, horizon_days=7, warmup_days=2, max_rows=5_000)
    assert 4_000 < len(data.y) < 6_000, "a hash-fixed share of the eligible events"
    start = events[0].occurred_at.timestamp()
    end = events[-1].occurred_at.timestamp()
    for cid, at, y in zip(data.customers, data.times, data.y, strict=True):
        assert start + 2 * 86400 <= at <= end - 7 * 86400
        gone = churn.get(cid, math.inf)
        assert at < gone and y == int(gone <= at + 7 * 86400)
    assert 0 < data.y.sum() < len(data.y)
    again = event_snapshot_dataset(events, horizon_days=7, warmup_days=2, max_rows=5_000)
    assert again.times == data.times and np.array_equal(again.x, data.x)
