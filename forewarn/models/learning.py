"""Learning from the stream (issue 11 §3): labels that mature in stream time, a bounded sample
to re-fit on, and a champion that a challenger must beat before it serves.

A moment (a feature row at an event) is **positive** when its customer contacts support
within ``horizon`` after it, strictly after it, **negative** when the horizon passes without
a contact. Every row waits (``pending``) until stream time has passed its horizon, whatever
its label, and is labelled then from the contacts received: were positives released at
their contact, the most recent labelled rows, the ones a challenger is judged on, would hold
twice the positives of the stream. Labelling at release also makes the labels independent of
the order in which rows and contacts arrive (two topics interleave differently every run).
Nobody labels rows by hand.

The sample keeps every positive and a share (``negative_rate``) of the negatives, each kept
negative weighing ``1 / negative_rate`` more, so that weighted counts and a weighted fit
stay unbiased. Which negatives are kept is fixed by the customer and the time (a hash), so a
replay keeps the same ones. At most ``capacity`` labelled rows are kept, oldest out first.

>>> s = MaturingSample(horizon=3600, negative_rate=1.0, capacity=100)
>>> s.add("ann", 0.0, [1.0]), s.add("bob", 0.0, [0.0])   # both waiting for their label
(True, True)
>>> s.contact("ann", 600.0)              # ann's row will be positive
>>> s.advance(3600.0)                    # both horizons passed: bob's without a contact
>>> [(r.customer_id, r.label, r.weight) for r in s.labelled]
[('ann', 1, 1.0), ('bob', 0, 1.0)]
"""

from __future__ import annotations

import bisect
import heapq
import math
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from forewarn.models.state import stable_fraction


@dataclass(frozen=True, slots=True)
class LabelledRow:
    customer_id: str
    #: stream time of the moment (epoch seconds)
    at: float
    features: tuple[float, ...]
    label: int
    #: how many rows of the stream this one stands for (1 for positives)
    weight: float


@dataclass(order=True, slots=True)
class _Pending:
    at: float
    customer_id: str
    #: ties between rows of one customer at one time: released in a fixed order
    tiebreak: str
    features: tuple[float, ...] = field(compare=False)
    weight: float = field(compare=False)


@dataclass(slots=True)
class MaturingSample:
    """Rows waiting for their label and the labelled rows a re-fit learns from."""

    horizon: float
    negative_rate: float
    capacity: int
    #: rows waiting at most; beyond it new rows are refused (counted in ``dropped_pending``):
    #: size it above rows per second times the horizon
    pending_capacity: int = 1_000_000
    _pending: list[_Pending] = field(default_factory=list)
    _contacts: dict[str, list[float]] = field(default_factory=dict)
    labelled: deque[LabelledRow] = field(default_factory=deque)
    #: rows dropped while pending (the pending bound), and negatives seen (kept or not)
    dropped_pending: int = 0
    negatives_seen: int = 0
    #: stream time labels were released up to: a row whose horizon ended before it is late
    released_until: float = -math.inf

    def __post_init__(self) -> None:
        if not 0 < self.negative_rate <= 1:
            raise ValueError("negative_rate is a share: above 0, at most 1")
        if self.horizon <= 0 or self.capacity <= 0:
            raise ValueError("horizon and capacity must be positive")

    def add(
        self,
        customer_id: str,
        at: float,
        features: Sequence[float],
        weight: float = 1.0,
        tiebreak: str = "",
    ) -> bool:
        """A moment of ``customer_id`` at stream time ``at``, standing for ``weight`` moments
        of the stream (it was sampled at ``1 / weight``). False when refused: its horizon
        already passed (its contacts may be forgotten), or too many rows wait."""
        if at + self.horizon <= self.released_until:
            return False
        if len(self._pending) >= self.pending_capacity:
            self.dropped_pending += 1
            return False
        row = _Pending(at, customer_id, tiebreak, tuple(float(x) for x in features), weight)
        heapq.heappush(self._pending, row)
        return True

    def contact(self, customer_id: str, at: float) -> None:
        """A support contact: the customer's rows within ``horizon`` strictly before it will
        be positive (the contact's own moment is not a prediction of it)."""
        times = self._contacts.setdefault(customer_id, [])
        if at not in times:
            bisect.insort(times, at)

    def advance(self, now: float) -> None:
        """Stream time reached ``now``: rows whose horizon passed get their label."""
        self.released_until = max(self.released_until, now)
        while self._pending and self._pending[0].at + self.horizon <= now:
            p = heapq.heappop(self._pending)
            times = self._contacts.get(p.customer_id, ())
            i = bisect.bisect_right(times, p.at)
            if i < len(times) and times[i] <= p.at + self.horizon:
                self._keep(LabelledRow(p.customer_id, p.at, p.features, 1, p.weight))
                continue
            self.negatives_seen += 1
            if keeps_negative(p.customer_id, p.at, self.negative_rate):
                weight = p.weight / self.negative_rate
                self._keep(LabelledRow(p.customer_id, p.at, p.features, 0, weight))
        # Contacts before every row still pending, and before any row still accepted (one
        # whose horizon has not passed), can label nothing more.
        oldest = min(self._pending[0].at if self._pending else now, now - self.horizon)
        for cid in [c for c, ts in self._contacts.items() if ts[-1] <= oldest]:
            del self._contacts[cid]

    def _keep(self, row: LabelledRow) -> None:
        self.labelled.append(row)
        if len(self.labelled) > self.capacity:
            self.labelled.popleft()

    @property
    def pending(self) -> int:
        return len(self._pending)

    def arrays(
        self, rows: Sequence[LabelledRow] | None = None
    ) -> tuple[NDArray[np.float64], NDArray[np.int64], NDArray[np.float64]]:
        """(features, labels, weights) of ``rows`` (default: every labelled row)."""
        rows = list(self.labelled) if rows is None else list(rows)
        width = len(rows[0].features) if rows else 0
        x = np.array([r.features for r in rows], dtype=np.float64).reshape(len(rows), width)
        y = np.array([r.label for r in rows], dtype=np.int64)
        w = np.array([r.weight for r in rows], dtype=np.float64)
        return x, y, w


def keeps_negative(customer_id: str, at: float, rate: float) -> bool:
    """Whether the negative of ``customer_id`` at ``at`` is in the sample: fixed by both, so
    every replay keeps the same rows."""
    if rate >= 1:
        return True
    return stable_fraction(f"{customer_id}\x1f{at!r}") < rate


def split_by_time(
    rows: Sequence[LabelledRow], recent_share: float
) -> tuple[list[LabelledRow], list[LabelledRow]]:
    """(older rows to fit on, the most recent ``recent_share`` to judge on): never a random
    split across time."""
    ordered = sorted(rows, key=lambda r: r.at)
    cut = round(len(ordered) * (1 - recent_share))
    return ordered[:cut], ordered[cut:]


@dataclass(frozen=True, slots=True)
class Verdict:
    """Whether a challenger replaces the champion, and why (logged, counted, recorded)."""

    accept: bool
    reason: str
    #: weighted log loss of each on the judging rows (lower is better; None: not judged)
    champion_loss: float | None = None
    challenger_loss: float | None = None
    positives: int = 0
    rows: int = 0


def weighted_log_loss(
    p: NDArray[np.float64], y: NDArray[np.int64], w: NDArray[np.float64]
) -> float:
    q = np.clip(p, 1e-6, 1 - 1e-6)
    losses = -(y * np.log(q) + (1 - y) * np.log(1 - q))
    return float(np.sum(w * losses) / np.sum(w))


def weighted_auc(p: NDArray[np.float64], y: NDArray[np.int64], w: NDArray[np.float64]) -> float:
    """ROC AUC with row weights: the chance that a positive ranks above a negative."""
    order = np.argsort(p, kind="stable")
    p, y, w = p[order], y[order], w[order]
    neg = np.where(y == 0, w, 0.0)
    pos = np.where(y == 1, w, 0.0)
    below = np.cumsum(neg) - neg  # negative weight strictly below, before ties
    # ties: half of the negatives with the same score
    _, start, counts = np.unique(p, return_index=True, return_counts=True)
    tied = np.add.reduceat(neg, start)
    half = np.repeat(tied / 2, counts)
    first_below = np.repeat(below[start], counts)
    total = pos.sum() * neg.sum()
    return float(np.sum(pos * (first_below + half)) / total) if total > 0 else 0.5


def judge(
    champion: NDArray[np.float64] | None,
    challenger: NDArray[np.float64],
    y: NDArray[np.int64],
    w: NDArray[np.float64],
    *,
    margin: float = 0.01,
    min_positives: int = 30,
    min_rows: int = 300,
    base_rate: float | None = None,
) -> Verdict:
    """Champion/challenger on the most recent matured labels neither was fitted on
    (``champion``/``challenger``: each one's predicted probabilities for them; no champion:
    the first model). The challenger serves only if its weighted log loss is at least
    ``margin`` (a share) below the champion's and it ranks better (weighted ROC AUC; the
    first model: better than chance); a window with too few labels (an outage, a
    quiet night) decides nothing, so a bad window never replaces a good model.

    The first model must beat a constant: ``base_rate``, the rate of the rows it was fitted
    on (default: the judging rows' own rate, which knows more than any model fitted before
    them could)."""
    positives, rows = int(y.sum()), len(y)
    if positives < min_positives or rows < min_rows:
        return Verdict(False, f"too few matured labels to judge: {positives} positives in "
                       f"{rows} rows (needs {min_positives} and {min_rows})", None, None,
                       positives, rows)  # fmt: skip
    new = weighted_log_loss(challenger, y, w)
    if not math.isfinite(new):
        return Verdict(False, "the challenger's predictions are not finite", None, None,
                       positives, rows)  # fmt: skip
    base = float(np.average(y, weights=w)) if base_rate is None else base_rate
    prior = weighted_log_loss(np.full(rows, base), y, w)
    # Volume targets act on the ranking alone: a better calibrated model that ranks worse
    # would send the worse moments. So a challenger must also rank at least as well.
    ranks = weighted_auc(challenger, y, w)
    floor = 0.5 if champion is None else weighted_auc(champion, y, w)
    if champion is None:
        if new < prior * (1 - margin) and ranks <= floor:
            return Verdict(False, f"ranks no better than chance: ROC AUC {ranks:.3f}", prior,
                           new, positives, rows)  # fmt: skip
        if new < prior * (1 - margin):
            return Verdict(True, f"first model: log loss {new:.4f} against {prior:.4f} for "
                           "the base rate", prior, new, positives, rows)  # fmt: skip
        return Verdict(False, f"no better than the base rate: log loss {new:.4f} against "
                       f"{prior:.4f}", prior, new, positives, rows)  # fmt: skip
    old = weighted_log_loss(champion, y, w)
    if new < old * (1 - margin) and ranks < floor:
        return Verdict(False, f"ranks worse: ROC AUC {ranks:.3f} against the champion's "
                       f"{floor:.3f}", old, new, positives, rows)  # fmt: skip
    if new < old * (1 - margin):
        return Verdict(True, f"log loss {new:.4f} against the champion's {old:.4f}", old, new,
                       positives, rows)  # fmt: skip
    return Verdict(False, f"not better by {margin:.0%}: log loss {new:.4f} against the "
                   f"champion's {old:.4f}", old, new, positives, rows)  # fmt: skip
