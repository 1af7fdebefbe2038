"""The engine reads both feature rows in one pass over the state (``read_features``); every
number must equal its definition: a ``window_count`` per feature, the latest error at or
before the moment, the session's age. Late events (times after the moment) included."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from forewarn.models.contracts import JourneyEvent
from forewarn.models.features import (
    _CONTACT_COUNTS,
    _COUNTS,
    CONTACT_FEATURES,
    DAY,
    ERRORS,
    HOUR,
    contact_features,
    read_features,
)
from forewarn.models.friction import FrictionConfig
from forewarn.models.state import CustomerState, apply_event

T0 = datetime(2026, 3, 2, tzinfo=UTC)
KINDS = sorted(
    {k for _, types, _ in (*_COUNTS, *_CONTACT_COUNTS) for k in types}
    | {"purchase", "checkout_started", "page_view", "session_start"}
)


def churn_by_definition(state: CustomerState, at: float, friction: float) -> list[float]:
    last = state.last_support_contact
    days = 30.0 if last is None or last > at else min(30.0, (at - last) / DAY)
    counts = [state.window_count(types, d * DAY, at) for _, types, d in _COUNTS]
    return [friction, *counts, days]


def contact_by_definition(state: CustomerState, at: float, friction: float) -> list[float]:
    counts = [state.window_count(types, h * HOUR, at) for _, types, h in _CONTACT_COUNTS]
    errors = [t for k in ERRORS for t in state.occurrences.get(k, ()) if t <= at]
    since = 1440.0 if not errors else min(1440.0, (at - max(errors)) / 60)
    checkouts = state.window_count(("checkout_started",), HOUR, at)
    without = max(0, checkouts - state.window_count(("purchase",), HOUR, at))
    s = state.session
    age = min(240.0, max(0.0, (at - s.started_at) / 60)) if s.key else 0.0
    last = state.last_support_contact
    days = 30.0 if last is None or last > at else min(30.0, (at - last) / DAY)
    return [friction, *counts, since, without, age, float(s.in_checkout), days]


@settings(max_examples=200, deadline=None)
@given(
    moves=st.lists(
        st.tuples(st.sampled_from(KINDS), st.integers(-3 * 3600, 9 * 24 * 3600)),
        min_size=0,
        max_size=60,
    ),
    ask=st.integers(-3600, 10 * 24 * 3600),
    friction=st.floats(0, 100),
)
def test_one_pass_equals_each_feature_by_definition(
    moves: list[tuple[str, int]], ask: int, friction: float
) -> None:
    cfg = FrictionConfig.default()
    state = CustomerState("c1")
    for i, (kind, seconds) in enumerate(moves):  # out of order on purpose: late events
        when = T0 + timedelta(seconds=seconds)
        apply_event(state, JourneyEvent(event_id=f"e{i}", customer_id="c1", type=kind,
                                        occurred_at=when), cfg)  # fmt: skip
    at = (T0 + timedelta(seconds=ask)).timestamp()
    churn, contact = read_features(state, at, friction, churn=True, contact=True)
    assert churn == churn_by_definition(state, at, friction)
    assert contact == contact_by_definition(state, at, friction)
    # one row alone is the same row, and the public one-row readers agree
    assert read_features(state, at, friction, churn=False, contact=True) == (None, contact)
    assert read_features(state, at, friction, churn=True, contact=False) == (churn, None)
    alone = np.zeros(len(CONTACT_FEATURES))
    contact_features(state, at, friction, alone)
    assert alone.tolist() == contact
