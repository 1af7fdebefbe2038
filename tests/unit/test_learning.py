"""Learning from the stream (issue 11 §3): label maturation, sampling weights, and the
champion a challenger must beat, including on a bad window."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from forewarn.models.learning import (
    LabelledRow,
    MaturingSample,
    judge,
    keeps_negative,
    split_by_time,
)

HOUR = 3600.0


def test_a_row_is_positive_only_if_its_customer_contacts_within_the_horizon() -> None:
    s = MaturingSample(horizon=24 * HOUR, negative_rate=1.0, capacity=100)
    s.add("ann", 0.0, [1.0])
    s.add("ann", 10 * HOUR, [2.0])
    s.add("bob", 10 * HOUR, [3.0])
    s.contact("ann", 30 * HOUR)  # 30 h after the first row, 20 h after the second
    labels = {(r.customer_id, r.at): r.label for r in s.labelled}
    assert labels == {("ann", 0.0): 0, ("ann", 10 * HOUR): 1}, "bob waits: not known yet"
    assert s.pending == 1
    s.add("bob", 40 * HOUR, [4.0])  # stream time passes bob's first horizon
    assert {(r.customer_id, r.at): r.label for r in s.labelled}[("bob", 10 * HOUR)] == 0
    s.contact("bob", 41 * HOUR)
    assert [r.label for r in s.labelled if r.customer_id == "bob"] == [0, 1]


def test_a_contact_labels_only_rows_before_it() -> None:
    s = MaturingSample(horizon=HOUR, negative_rate=1.0, capacity=10)
    s.add("ann", 100.0, [0.0])
    s.contact("ann", 50.0)  # late: stream time does not go back, the row is after it
    assert s.labelled == type(s.labelled)() and s.pending == 1


def test_negatives_are_sampled_with_weights_that_keep_counts_unbiased() -> None:
    s = MaturingSample(horizon=HOUR, negative_rate=0.1, capacity=100_000)
    for i in range(20_000):
        s.add(f"c{i % 500}", float(i), [float(i % 7)])
        if i % 100 == 0:
            s.contact(f"c{i % 500}", float(i) + 1)
    s.advance(1e9)
    negatives = [r for r in s.labelled if r.label == 0]
    positives = [r for r in s.labelled if r.label == 1]
    assert len(positives) == 200 and all(r.weight == 1.0 for r in positives), "all kept"
    assert 1_700 < len(negatives) < 2_260, len(negatives)  # about a tenth of 19,800
    weighted = sum(r.weight for r in negatives)
    assert abs(weighted - s.negatives_seen) / s.negatives_seen < 0.06
    x, y, w = s.arrays()
    assert (
        x.shape == (len(s.labelled), 1)
        and int(y.sum()) == 200
        and w.sum() == pytest.approx(200 + weighted)
    )


@settings(max_examples=20, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 30), st.integers(0, 5_000), st.booleans()),
                max_size=200))  # fmt: skip
def test_the_same_stream_keeps_the_same_sample(steps: list[tuple[int, int, bool]]) -> None:
    def run() -> list[LabelledRow]:
        s = MaturingSample(horizon=HOUR, negative_rate=0.3, capacity=50)
        t = 0.0
        for c, dt, contact in steps:
            t += dt
            (s.contact if contact else lambda cid, at: s.add(cid, at, [at]))(f"c{c}", t)
        s.advance(t + 2 * HOUR)
        return list(s.labelled)

    assert run() == run()
    assert len(run()) <= 50, "bounded: the oldest labelled rows go first"
    assert keeps_negative("c1", 5.0, 0.3) == keeps_negative("c1", 5.0, 0.3)


def test_the_split_is_by_time_never_random() -> None:
    rows = [LabelledRow("c", float(t), (0.0,), t % 2, 1.0) for t in (5, 1, 4, 2, 3)]
    older, recent = split_by_time(rows, 0.4)
    assert [r.at for r in older] == [1.0, 2.0, 3.0] and [r.at for r in recent] == [4.0, 5.0]


def _window(n: int, positives: int, seed: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = np.zeros(n, dtype=np.int64)
    y[rng.choice(n, positives, replace=False)] = 1
    signal = y + rng.normal(0, 0.7, n)  # a feature that tells positives apart, noisily
    return y, signal, np.ones(n)


def _prob(signal: np.ndarray, strength: float) -> np.ndarray:
    """The true probability of a positive given ``signal`` (strength 1), or a blunter one."""
    prior = np.log(0.05 / 0.95)
    p: np.ndarray = 1 / (1 + np.exp(-(prior + strength * (signal - 0.5) / 0.49)))
    return p


def test_a_better_challenger_replaces_the_champion_and_a_worse_one_does_not() -> None:
    y, signal, w = _window(2_000, 100)
    sharp, blunt = _prob(signal, 1.0), _prob(signal, 0.3)
    up = judge(blunt, sharp, y, w)
    assert up.accept and up.challenger_loss is not None and up.champion_loss is not None
    assert up.challenger_loss < up.champion_loss
    down = judge(sharp, blunt, y, w)
    assert not down.accept and "not better" in down.reason
    same = judge(sharp, sharp, y, w)
    assert not same.accept, "equal is not better: the margin protects the champion"


def test_a_bad_window_never_replaces_a_good_model() -> None:
    # an outage: few events matured, a handful of contacts, all of them easy to "predict"
    y, signal, w = _window(120, 6)
    lucky = np.where(y == 1, 0.99, 0.01)
    good = _prob(signal, 1.0)
    verdict = judge(good, lucky, y, w)
    assert not verdict.accept and "too few matured labels" in verdict.reason
    assert verdict.positives == 6 and verdict.rows == 120


def test_the_first_model_must_beat_the_base_rate() -> None:
    y, signal, w = _window(2_000, 100)
    assert judge(None, _prob(signal, 1.0), y, w).accept
    flat = np.full(len(y), 0.5)  # says nothing, and says it badly
    first = judge(None, flat, y, w)
    assert not first.accept and "base rate" in first.reason
