"""Friction score, decayed signals, rolling counts, dedup and session detection."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from forewarn.models.friction import FrictionConfig, friction_scores
from forewarn.models.session import (
    PAGE_LOOP,
    RAGE_BURST,
    SESSION_GAP_SECONDS,
    SessionState,
    track_session,
)
from forewarn.models.state import CustomerState, apply_event, survey_is_poor
from tests.conftest import T0, event

CFG = FrictionConfig.default()
N = len(CFG.signals)

signal_rows = st.lists(
    st.lists(st.floats(0, 20, allow_nan=False), min_size=N, max_size=N), min_size=1, max_size=20
)


@given(signal_rows)
def test_contributions_add_up_to_the_score_and_stay_in_range(rows: list[list[float]]) -> None:
    scores, contrib = friction_scores(CFG, np.array(rows))
    assert np.all((scores >= 0) & (scores <= 100))
    assert np.allclose(contrib.sum(axis=1), scores)
    assert np.all(contrib >= 0)


@given(signal_rows, st.integers(0, N - 1), st.floats(0.01, 5))
def test_more_of_any_signal_never_lowers_the_score(
    rows: list[list[float]], i: int, extra: float
) -> None:
    m = np.array(rows)
    more = m.copy()
    more[:, i] += extra
    assert np.all(friction_scores(CFG, more)[0] >= friction_scores(CFG, m)[0])


def test_batch_scoring_equals_row_by_row() -> None:
    rng = np.random.default_rng(3)
    m = rng.exponential(0.5, size=(50, N))
    batch = friction_scores(CFG, m)[0]
    single = [friction_scores(CFG, m[i : i + 1])[0][0] for i in range(50)]
    assert np.allclose(batch, single)


def _row(state: CustomerState, at: float) -> np.ndarray:
    out = np.zeros(N)
    state.signal_row(CFG, at, out)
    return out


def test_a_signal_halves_after_its_half_life_and_resolution_clears_it() -> None:
    s = CustomerState("c1")
    apply_event(s, event("c1", "payment_failed", T0, n=1), CFG)
    i = CFG.index["payment_trouble"]
    half = CFG.signals[i].half_life_seconds
    assert _row(s, T0.timestamp())[i] == 1.0
    assert abs(_row(s, T0.timestamp() + half)[i] - 0.5) < 1e-9
    apply_event(s, event("c1", "payment_succeeded", T0 + timedelta(minutes=2), n=2), CFG)
    assert _row(s, T0.timestamp() + 120)[i] == 0.0


def test_late_events_give_the_same_signals_as_in_order() -> None:
    times = [T0 + timedelta(minutes=m) for m in (0, 7, 3, 12)]
    evs = [event("c1", "error_page", t, n=i) for i, t in enumerate(times)]
    a, b = CustomerState("c1"), CustomerState("c1")
    for e in evs:
        apply_event(a, e, CFG)
    for e in sorted(evs, key=lambda e: e.occurred_at):
        apply_event(b, e, CFG)
    at = (T0 + timedelta(minutes=20)).timestamp()
    assert np.allclose(_row(a, at), _row(b, at))
    assert a.occurrences["error_page"] == sorted(a.occurrences["error_page"])


def test_rolling_window_counts_in_event_time() -> None:
    s = CustomerState("c1")
    for m in (0, 10, 11, 50, 70):
        apply_event(s, event("c1", "error_page", T0 + timedelta(minutes=m), n=m), CFG)
    at = (T0 + timedelta(minutes=70)).timestamp()
    # the window is (at - 1 h, at]: minute 10 is exactly an hour back, so it is out
    assert s.window_count(("error_page",), 3600, at) == 3  # minutes 11, 50, 70
    assert s.window_count(("error_page",), 3600, at - 59 * 60) == 3  # as of minute 11
    assert s.window_count(("app_crash",), 3600, at) == 0


def test_duplicate_event_ids_are_dropped_and_leave_state_alone() -> None:
    s = CustomerState("c1")
    e = event("c1", "payment_failed", T0, n=1)
    assert not apply_event(s, e, CFG).duplicate
    before = (_row(s, T0.timestamp()).copy(), s.events_seen)
    assert apply_event(s, e, CFG).duplicate
    assert np.array_equal(_row(s, T0.timestamp()), before[0])
    assert s.events_seen == before[1]


def test_rage_burst_fires_once_per_session() -> None:
    s = SessionState()
    fired = [track_session(s, "rage_click", 10.0 + i, "s1", "/pay") for i in range(6)]
    assert [f for f in fired if f] == [(RAGE_BURST,)]
    assert track_session(s, "rage_click", 20.0, "s2", None) == ()  # new session, count resets
    assert s.rage_clicks == 1


def test_page_loop_detected_on_the_third_visit_of_a_page() -> None:
    s = SessionState()
    out = [
        track_session(s, "page_view", float(i), "s1", p)
        for i, p in enumerate(["/a", "/b", "/a", "/c", "/a", "/a"])
    ]
    assert out == [(), (), (), (), (PAGE_LOOP,), ()]


def test_implicit_sessions_split_on_inactivity() -> None:
    s = SessionState()
    track_session(s, "checkout_started", 0.0, None, None)
    assert s.in_checkout
    track_session(s, "page_view", 60.0, None, "/x")
    assert s.in_checkout, "same session within the gap"
    track_session(s, "page_view", 60.0 + SESSION_GAP_SECONDS + 1, None, "/x")
    assert not s.in_checkout, "a new session after the gap"


def test_derived_triggers_feed_signals_and_counts() -> None:
    s = CustomerState("c1")
    derived = [
        apply_event(s, event("c1", "rage_click", T0 + timedelta(seconds=i), n=i), CFG).derived
        for i in range(3)
    ]
    assert derived[-1] == (RAGE_BURST,)
    assert s.window_count((RAGE_BURST,), 60, T0.timestamp() + 5) == 1


def test_survey_scores_that_count_as_poor() -> None:
    assert survey_is_poor({"kind": "nps", "score": 6})
    assert not survey_is_poor({"kind": "nps", "score": 7})
    assert survey_is_poor({"kind": "ces", "score": 6})
    assert not survey_is_poor({"kind": "csat", "score": 4})
    assert not survey_is_poor({"kind": "nps", "score": "bad"})


@settings(max_examples=50)
@given(st.permutations(list(range(8))))
def test_state_after_any_arrival_order_counts_every_event_once(order: list[int]) -> None:
    evs = [event("c1", "checkout_error", T0 + timedelta(minutes=i), n=i) for i in range(8)]
    s = CustomerState("c1")
    for i in order + order:  # every event twice, in any order
        apply_event(s, evs[i], CFG)
    assert s.events_seen == 8
    assert s.window_count(("checkout_error",), 3600, (T0 + timedelta(minutes=7)).timestamp()) == 8
