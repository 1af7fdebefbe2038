"""The contact-risk model offline (issue 11 §1): rows at events, labels from the next contact,
judged on time."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from forewarn.models.features import CONTACT_FEATURES
from forewarn.offline.contact_risk import (
    contact_dataset,
    fit_and_judge,
)
from forewarn.offline.simulator import JourneySimulator
from forewarn.offline.training import TrainingError
from tests.conftest import event

T0 = datetime(2026, 5, 1, tzinfo=UTC)
HOUR = 3600.0


def test_rows_are_labelled_by_a_contact_within_the_horizon_after_them() -> None:
    evs = [
        event("ann", "error_page", T0, n=1),
        event("ann", "page_view", T0 + timedelta(minutes=20), n=2),
        event("ann", "support_contact", T0 + timedelta(minutes=25), n=3),
        event("bob", "page_view", T0 + timedelta(minutes=5), n=4),
        event("ann", "page_view", T0 + timedelta(hours=3), n=5),
        event("bob", "page_view", T0 + timedelta(hours=4), n=6),  # the history's end
    ]
    rows = contact_dataset(evs, horizon=HOUR)
    got = [(c, int(at - T0.timestamp()), int(y)) for c, at, y in
           zip(rows.customers, rows.at, rows.y, strict=True)]  # fmt: skip
    # the contact is no row; ann's rows within the hour before it are positive; rows whose
    # hour runs past the end are left out
    assert got == [("ann", 0, 1), ("ann", 1200, 1), ("bob", 300, 0), ("ann", 10800, 0)]
    errors = rows.x[:, CONTACT_FEATURES.index("errors_1h")]
    since = rows.x[:, CONTACT_FEATURES.index("minutes_since_error")]
    assert errors[0] == 1 and since[1] == pytest.approx(20.0), "read off the state then"


def test_the_model_is_fitted_before_the_cut_and_judged_after_it() -> None:
    sim = JourneySimulator(400, seed=77, start=T0, span=timedelta(days=6))
    rows = contact_dataset(list(sim.events()))
    cut = T0.timestamp() + 4 * 86400
    ev = fit_and_judge(rows, cut=cut)
    # training rows are those whose whole 24 h horizon closed before the cut: no label
    # from after the cut leaks into the fit
    assert ev.train_rows == int(np.sum(rows.at + 86400 <= cut))
    assert ev.test_rows == int(np.sum(rows.at >= cut))
    assert 0.5 < ev.roc_auc <= 1 and 0 < ev.base_rate < 1
    assert ev.linear.features == list(CONTACT_FEATURES)
    assert ev.held_out.rows == ev.test_rows and ev.held_out.roc_auc == ev.roc_auc
    small = fit_and_judge(rows, cut=cut, max_rows=2_000)
    assert small.train_rows == 2_000


def test_a_history_without_contacts_cannot_train() -> None:
    evs = [event("ann", "page_view", T0 + timedelta(hours=h), n=h) for h in range(60)]
    rows = contact_dataset(evs, horizon=HOUR)
    with pytest.raises(TrainingError, match="no contacts"):
        fit_and_judge(rows, cut=T0.timestamp() + 30 * HOUR, horizon=HOUR)
