"""Training the churn-risk model from history, with the stream's own state code.

Events are replayed in event-time order through ``apply_event`` (what the scoring worker
runs). Every ``snapshot_every_hours`` each known customer who has not churned yet becomes
one training row: the features at that moment (``features.churn_features``) and the label
"churned within ``horizon_days`` after it". Churn is the customer's first
``subscription_cancelled`` event, or a date from a labels file. Rows whose label window runs
past the end of the history are left out (their label is unknown).

Customers are split 75/25 by a hash of their id (the same customer never sits on both
sides); the operating threshold maximises F1 on the training rows; the card reports the
held-out rows only.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
from numpy.typing import NDArray

from forewarn.errors import ForewarnError
from forewarn.models.contracts import JourneyEvent
from forewarn.models.features import CHURN_FEATURES, churn_features
from forewarn.models.fitting import held_out_metrics, logistic_pipeline
from forewarn.models.friction import FrictionConfig, friction_scores
from forewarn.models.risk import (
    ClassBalance,
    LabelDefinition,
    LinearModel,
    ModelCard,
    TrainingData,
    linear_model_of,
    model_file_bytes,
)
from forewarn.models.state import CustomerState, apply_event, stable_fraction

CHURN_EVENT = "subscription_cancelled"
#: how often (in events folded into the state) the dataset builders call ``on_progress``
PROGRESS_EVERY = 20_000


class TrainingError(ForewarnError, ValueError):
    """History that cannot train a model (too short, one class only...)."""


@dataclass(frozen=True, slots=True)
class Snapshots:
    x: NDArray[np.float64]
    y: NDArray[np.int64]
    customers: list[str]
    times: list[float]


def churn_times(events: Sequence[JourneyEvent]) -> dict[str, float]:
    """Each churner's first cancellation, in epoch seconds."""
    out: dict[str, float] = {}
    for e in events:
        if e.type == CHURN_EVENT and e.customer_id not in out:
            out[e.customer_id] = e.occurred_at.timestamp()
    return out


def _rows_at(
    states: dict[str, CustomerState], who: list[str], at: float, friction: FrictionConfig
) -> NDArray[np.float64]:
    signals = np.zeros((len(who), len(friction.signals)))
    for i, cid in enumerate(who):
        states[cid].signal_row(friction, at, signals[i])
    scores, _ = friction_scores(friction, signals)
    x = np.zeros((len(who), len(CHURN_FEATURES)))
    for i, cid in enumerate(who):
        churn_features(states[cid], at, float(scores[i]), x[i])
    return x


def snapshot_dataset(
    events: Sequence[JourneyEvent],
    *,
    friction: FrictionConfig | None = None,
    horizon_days: float = 14.0,
    every_hours: float = 24.0,
    warmup_days: float = 3.0,
    churned_at: dict[str, float] | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> Snapshots:
    """Training rows from history (``events`` in event-time order). ``on_progress``: told
    the events folded into the state so far, now and then, and once at the end."""
    cfg = friction or FrictionConfig.default()
    if not events:
        raise TrainingError("the history is empty")
    churn = churned_at if churned_at is not None else churn_times(events)
    start, end = events[0].occurred_at.timestamp(), events[-1].occurred_at.timestamp()
    step, horizon = every_hours * 3600, horizon_days * 86400
    # Snapshots on whole-hour boundaries, after a warm-up that lets state fill.
    t = float(math.ceil((start + warmup_days * 86400) / 3600) * 3600)
    states: dict[str, CustomerState] = {}
    xs: list[NDArray[np.float64]] = []
    ys: list[int] = []
    customers: list[str] = []
    times: list[float] = []
    i = 0
    while t + horizon <= end:
        while i < len(events) and events[i].occurred_at.timestamp() <= t:
            e = events[i]
            apply_event(states.setdefault(e.customer_id, CustomerState(e.customer_id)), e, cfg)
            i += 1
            if on_progress is not None and i % PROGRESS_EVERY == 0:
                on_progress(i)
        who = [c for c in states if churn.get(c, math.inf) > t]
        if who:
            xs.append(_rows_at(states, who, t, cfg))
            ys += [int(churn.get(c, math.inf) <= t + horizon) for c in who]
            customers += who
            times += [t] * len(who)
        t += step
    if on_progress is not None:  # the events after the last snapshot are not needed
        on_progress(len(events))
    if not xs:
        raise TrainingError(
            f"the history spans {(end - start) / 86400:.1f} days: too short for a "
            f"{warmup_days:g}-day warm-up and a {horizon_days:g}-day label window"
        )
    return Snapshots(np.vstack(xs), np.array(ys, dtype=np.int64), customers, times)


def event_snapshot_dataset(
    events: Sequence[JourneyEvent],
    *,
    friction: FrictionConfig | None = None,
    horizon_days: float = 14.0,
    warmup_days: float = 3.0,
    churned_at: dict[str, float] | None = None,
    max_rows: int = 200_000,
    on_progress: Callable[[int], None] | None = None,
) -> Snapshots:
    """Training rows taken at events, not on a daily grid: the moments the stream scores.

    One row at an event of a customer who has not churned yet, once the warm-up has passed
    and while the horizon fits in the history; about ``max_rows``, a share fixed by a hash
    of customer and event (the same rows in every run). ``on_progress`` as in
    ``snapshot_dataset``."""
    cfg = friction or FrictionConfig.default()
    if not events:
        raise TrainingError("the history is empty")
    churn = churned_at if churned_at is not None else churn_times(events)
    start, end = events[0].occurred_at.timestamp(), events[-1].occurred_at.timestamp()
    horizon, first = horizon_days * 86400, start + warmup_days * 86400
    eligible = sum(1 for e in events if first <= e.occurred_at.timestamp() <= end - horizon)
    share = min(1.0, max_rows / max(1, eligible))
    states: dict[str, CustomerState] = {}
    signals = np.zeros((1, len(cfg.signals)))
    xs: list[NDArray[np.float64]] = []
    ys: list[int] = []
    customers: list[str] = []
    times: list[float] = []
    for i, e in enumerate(events):
        if on_progress is not None and i and i % PROGRESS_EVERY == 0:
            on_progress(i)  # events folded so far
        state = states.setdefault(e.customer_id, CustomerState(e.customer_id))
        at = apply_event(state, e, cfg).at
        gone = churn.get(e.customer_id, math.inf)
        if at < first or at + horizon > end or gone <= at:
            continue
        if share < 1 and stable_fraction(f"churn\x1f{e.customer_id}\x1f{e.event_id}") >= share:
            continue
        signals[:] = 0.0
        state.signal_row(cfg, at, signals[0])
        row = np.zeros(len(CHURN_FEATURES))
        churn_features(state, at, float(friction_scores(cfg, signals)[0][0]), row)
        xs.append(row)
        ys.append(int(gone <= at + horizon))
        customers.append(e.customer_id)
        times.append(at)
    if on_progress is not None:
        on_progress(len(events))
    if not xs:
        raise TrainingError(
            f"the history spans {(end - start) / 86400:.1f} days: too short for a "
            f"{warmup_days:g}-day warm-up and a {horizon_days:g}-day label window"
        )
    return Snapshots(np.vstack(xs), np.array(ys, dtype=np.int64), customers, times)


def _held_out(cid: str) -> bool:
    return hashlib.blake2b(cid.encode(), digest_size=2).digest()[0] < 64  # 25%


def fit_churn_model(
    data: Snapshots, *, source_sha256: str, period: tuple[datetime, datetime], events: int,
    version: str, horizon_days: float, every_hours: float, friction_version: str,
    label_definition: str,
) -> tuple[LinearModel, ModelCard]:  # fmt: skip
    """Fit scaler + logistic regression; measure on the held-out customers.

    The fitted numbers leave scikit-learn as a ``LinearModel`` (plain numbers, loaded
    without running code), and the card names the SHA-256 of the file they are saved in.
    """
    test = np.array([_held_out(c) for c in data.customers])
    y_train, y_test = data.y[~test], data.y[test]
    for name, y in (("training", y_train), ("held-out", y_test)):
        if len(set(y.tolist())) < 2:
            raise TrainingError(f"the {name} rows hold only one class: no churners to learn from")
    pipeline = logistic_pipeline()
    pipeline.fit(data.x[~test], y_train)
    p_train = pipeline.predict_proba(data.x[~test])[:, 1]
    p = pipeline.predict_proba(data.x[test])[:, 1]
    metrics = held_out_metrics(y_train, p_train, y_test, p)
    positives = int(data.y.sum())
    linear = linear_model_of(pipeline)
    card = ModelCard(
        model_version=version,
        created_at=datetime.now(UTC),
        model_kind="StandardScaler + LogisticRegression (scikit-learn), as plain numbers",
        model_sha256=hashlib.sha256(model_file_bytes(linear)).hexdigest(),
        features=list(CHURN_FEATURES),
        friction_version=friction_version,
        training_data=TrainingData(
            sha256=source_sha256,
            events=events,
            customers=len(set(data.customers)),
            start=period[0],
            end=period[1],
        ),
        label=LabelDefinition(
            definition=label_definition,
            horizon_days=horizon_days,
            snapshot_every_hours=every_hours,
        ),
        class_balance=ClassBalance(
            positives=positives,
            negatives=int(len(data.y) - positives),
            rate=round(positives / len(data.y), 5),
        ),
        held_out=metrics,
    )
    return linear, card


def event_feature_rows(
    events: Sequence[JourneyEvent], friction: FrictionConfig | None = None
) -> NDArray[np.float64]:
    """Features at every event, replayed offline (what the stream computes per event)."""
    cfg = friction or FrictionConfig.default()
    states: dict[str, CustomerState] = {}
    rows = np.zeros((len(events), len(CHURN_FEATURES)))
    signals = np.zeros((1, len(cfg.signals)))
    for i, e in enumerate(events):
        state = states.setdefault(e.customer_id, CustomerState(e.customer_id))
        applied = apply_event(state, e, cfg)
        signals[:] = 0.0
        state.signal_row(cfg, applied.at, signals[0])
        score = float(friction_scores(cfg, signals)[0][0])
        churn_features(state, applied.at, score, rows[i])
    return rows


def period_of(events: Sequence[JourneyEvent]) -> tuple[datetime, datetime]:
    return events[0].occurred_at, events[-1].occurred_at


def default_version(now: datetime | None = None) -> str:
    return f"churn-{(now or datetime.now(UTC)).strftime('%Y%m%d-%H%M%S')}"
