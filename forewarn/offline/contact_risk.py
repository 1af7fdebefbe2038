"""The contact-risk model, offline (issue 11 §1): the chance of a support contact within a
horizon after an event, from the contact features read off the state at that event.

Rows are taken at every event (not daily: the moments that matter are in-session, minutes
before a contact), with the stream's own state code (``apply_event``) and features
(``features.contact_features``), so training and serving cannot drift. A row is positive when
the customer's next support contact comes within ``horizon`` after the event, strictly after
it; rows whose horizon runs past the end of the history are left out (their label is unknown),
and support contacts are not rows (they are what is predicted).

Judged on time, never on a random split: the model is fitted on the rows of the first part
of the history whose horizon closes before the cut, and measured on the rows after it, next to
friction alone on the same rows. A model trained before something changed (an incident, new
traffic) is measured on what came after, as in production. (``forewarn learn`` re-fits it in
the stream every day instead: ``pipeline/learner.py``.)
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

import numpy as np
from numpy.typing import NDArray
from sklearn.metrics import (
    average_precision_score,
    roc_auc_score,
)

from forewarn.models.contracts import JourneyEvent
from forewarn.models.features import CONTACT_FEATURES, contact_features
from forewarn.models.fitting import fit_linear, held_out_metrics
from forewarn.models.friction import FrictionConfig, friction_scores
from forewarn.models.risk import (
    ClassBalance,
    HeldOutMetrics,
    LabelDefinition,
    LinearModel,
    ModelCard,
    TrainingData,
    model_file_bytes,
    predict,
)
from forewarn.models.state import CustomerState, apply_event, stable_fraction
from forewarn.offline import training
from forewarn.offline.training import TrainingError

CONTACT = "support_contact"
#: the default horizon, and the short in-session one
HORIZON_SECONDS = 24 * 3600.0
IN_SESSION_HORIZON_SECONDS = 30 * 60.0


@dataclass(frozen=True, slots=True)
class ContactRows:
    x: NDArray[np.float64]
    y: NDArray[np.int64]
    #: event time of each row, epoch seconds
    at: NDArray[np.float64]
    customers: list[str]


def contact_dataset(
    events: Sequence[JourneyEvent],
    *,
    horizon: float = HORIZON_SECONDS,
    friction: FrictionConfig | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> ContactRows:
    """One row per event (``events`` in event-time order), labelled by the next contact.
    ``on_progress``: told the events folded so far, now and then, and once at the end."""
    cfg = friction or FrictionConfig.default()
    if not events:
        raise TrainingError("the history is empty")
    contacts: dict[str, list[float]] = {}
    for e in events:
        if e.type == CONTACT:
            contacts.setdefault(e.customer_id, []).append(e.occurred_at.timestamp())
    end = events[-1].occurred_at.timestamp()
    states: dict[str, CustomerState] = {}
    signals = np.zeros((1, len(cfg.signals)))
    rows: list[NDArray[np.float64]] = []
    labels: list[int] = []
    times: list[float] = []
    who: list[str] = []
    for i, e in enumerate(events):
        if on_progress is not None and i and i % training.PROGRESS_EVERY == 0:
            on_progress(i)  # events folded so far
        state = states.setdefault(e.customer_id, CustomerState(e.customer_id))
        applied = apply_event(state, e, cfg)
        if applied.duplicate or e.type == CONTACT or applied.at + horizon > end:
            continue
        signals[:] = 0.0
        state.signal_row(cfg, applied.at, signals[0])
        row = np.zeros(len(CONTACT_FEATURES))
        contact_features(state, applied.at, float(friction_scores(cfg, signals)[0][0]), row)
        mine = contacts.get(e.customer_id, [])
        nxt = bisect.bisect_right(mine, applied.at)
        labels.append(int(nxt < len(mine) and mine[nxt] <= applied.at + horizon))
        rows.append(row)
        times.append(applied.at)
        who.append(e.customer_id)
    if on_progress is not None:
        on_progress(len(events))
    if not rows:
        raise TrainingError(f"no event is followed by {horizon / 3600:g} h of history")
    return ContactRows(np.vstack(rows), np.array(labels, dtype=np.int64),
                       np.array(times), who)  # fmt: skip


@dataclass(frozen=True, slots=True)
class ContactEvaluation:
    """Held-out figures on the rows after the cut (ROC AUC, PR AUC), the model's and
    friction alone's on the same rows."""

    linear: LinearModel
    #: the model's held-out figures as its card records them
    held_out: HeldOutMetrics
    train_rows_positive: int
    train_rows: int
    test_rows: int
    base_rate: float
    roc_auc: float
    pr_auc: float
    friction_roc_auc: float
    friction_pr_auc: float


def fit_and_judge(
    rows: ContactRows, *, cut: float, horizon: float = HORIZON_SECONDS, max_rows: int = 200_000
) -> ContactEvaluation:
    """Fit on rows before ``cut`` (epoch seconds) whose horizon closes by it; judge on the rows
    from ``cut`` on. ``max_rows``: training rows kept at most (a sample fixed by customer and
    time, positives first)."""
    train = rows.at + horizon <= cut
    test = rows.at >= cut
    y_train, y_test = rows.y[train], rows.y[test]
    for name, y in (("training", y_train), ("held-out", y_test)):
        if len(set(y.tolist())) < 2:
            raise TrainingError(f"the {name} rows hold only one class: no contacts to learn from")
    x_train = rows.x[train]
    if len(y_train) > max_rows:
        keep = _sample(np.flatnonzero(train), rows, max_rows)
        x_train, y_train = rows.x[keep], rows.y[keep]
    linear = fit_linear(x_train, y_train)
    p = predict(linear, rows.x[test])
    friction = rows.x[test][:, 0]
    held = held_out_metrics(y_train, predict(linear, x_train), y_test, p)
    return ContactEvaluation(
        linear=linear,
        train_rows_positive=int(y_train.sum()),
        held_out=held,
        train_rows=len(y_train),
        test_rows=len(y_test),
        base_rate=round(float(y_test.mean()), 5),
        roc_auc=held.roc_auc,
        pr_auc=held.pr_auc,
        friction_roc_auc=round(float(roc_auc_score(y_test, friction)), 4),
        friction_pr_auc=round(float(average_precision_score(y_test, friction)), 4),
    )


def _sample(index: NDArray[np.int64], rows: ContactRows, n: int) -> NDArray[np.int64]:
    """``n`` of the rows at ``index``, every positive first, the rest by a hash of customer and
    time (the same sample in every run)."""

    def key(i: int) -> tuple[int, float]:
        return (-int(rows.y[i]), stable_fraction(f"{rows.customers[i]}\x1f{rows.at[i]!r}"))

    chosen = sorted(index.tolist(), key=key)[:n]
    return np.array(sorted(chosen), dtype=np.int64)


def contact_card(
    evaluation: ContactEvaluation,
    *,
    version: str,
    horizon: float,
    friction_version: str,
    source_sha256: str,
    events: int,
    customers: int,
    period: tuple[datetime, datetime],
) -> ModelCard:
    """The card of an offline-trained contact-risk model (``forewarn train --target
    contact``): what it predicts, on what, and how it did after the cut."""
    ev = evaluation
    positives = ev.train_rows_positive
    return ModelCard(
        model_version=version,
        created_at=datetime.now(UTC),
        model_kind="StandardScaler + LogisticRegression (scikit-learn), as plain numbers",
        target="contact",
        model_sha256=hashlib.sha256(model_file_bytes(ev.linear)).hexdigest(),
        features=list(CONTACT_FEATURES),
        friction_version=friction_version,
        training_data=TrainingData(
            sha256=source_sha256,
            events=events,
            customers=customers,
            start=period[0],
            end=period[1],
        ),
        label=LabelDefinition(
            definition=f"a support contact within {horizon / 60:g} minutes after an event "
            "(rows at every event; fitted before the cut, measured after it)",
            horizon_days=horizon / 86_400,
            snapshot_every_hours=0.0,
        ),
        class_balance=ClassBalance(
            positives=positives,
            negatives=ev.train_rows - positives,
            rate=round(positives / max(1, ev.train_rows), 5),
        ),
        held_out=ev.held_out,
    )
