"""The friction score: is this customer struggling right now? (0-100)

Interpretable by construction: each event type feeds one or more named *signals*; a signal is
an exponentially decayed sum in event time with its own half-life; the raw friction is the
weighted sum of signals and the score saturates it into 0-100::

    raw   = sum(weight[s] * signal[s])
    score = 100 * (1 - exp(-raw / scale))

Each signal's share of ``raw`` is its contribution to the score, so the reasons on an action
add up to the score. Scoring is done on a whole batch at once (one row per event).

>>> cfg = FrictionConfig.default()
>>> import numpy as np
>>> row = np.zeros((1, len(cfg.signals)))
>>> row[0, cfg.index["payment_trouble"]] = 2.0
>>> round(float(friction_scores(cfg, row)[0][0]), 1)
63.2
"""

from __future__ import annotations

import math
from functools import cached_property

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict, Field

HOUR = 3600.0


class Signal(BaseModel):
    model_config = ConfigDict(frozen=True)

    name: str
    label: str = Field(description="plural noun a marketer reads, e.g. 'failed payments'")
    weight: float = Field(gt=0)
    half_life_seconds: float = Field(gt=0)
    #: event type (or derived trigger) -> how much one occurrence adds
    fed_by: dict[str, float]
    #: event types that mean the trouble is over (the signal resets to zero)
    resolved_by: tuple[str, ...] = ()
    #: what the reason text counts ("3 rage clicks"); default: everything in ``fed_by``
    counts: tuple[str, ...] = ()

    @property
    def counted(self) -> tuple[str, ...]:
        return self.counts or tuple(self.fed_by)


class FrictionConfig(BaseModel):
    """Weights and half-lives of the friction score; versioned because actions cite it."""

    model_config = ConfigDict(frozen=True)

    version: str
    scale: float = Field(gt=0)
    signals: tuple[Signal, ...]
    #: window used for the counts quoted in reasons ("3 in the last 24 h")
    reason_window_seconds: float = 24 * HOUR
    top_reasons: int = 3

    @cached_property
    def index(self) -> dict[str, int]:
        return {s.name: i for i, s in enumerate(self.signals)}

    @cached_property
    def feeds(self) -> dict[str, tuple[tuple[int, float], ...]]:
        """event type -> ((signal index, amount), ...)"""
        out: dict[str, list[tuple[int, float]]] = {}
        for i, s in enumerate(self.signals):
            for t, amount in s.fed_by.items():
                out.setdefault(t, []).append((i, amount))
        return {t: tuple(v) for t, v in out.items()}

    @cached_property
    def resolves(self) -> dict[str, tuple[int, ...]]:
        out: dict[str, list[int]] = {}
        for i, s in enumerate(self.signals):
            for t in s.resolved_by:
                out.setdefault(t, []).append(i)
        return {t: tuple(v) for t, v in out.items()}

    @cached_property
    def weights(self) -> NDArray[np.float64]:
        return np.array([s.weight for s in self.signals], dtype=np.float64)

    @cached_property
    def decay_rate_list(self) -> tuple[float, ...]:
        """ln 2 / half-life per signal, as plain floats for the per-event state update."""
        return tuple(math.log(2) / s.half_life_seconds for s in self.signals)

    @staticmethod
    def default() -> FrictionConfig:
        return DEFAULT_FRICTION


def friction_scores(
    config: FrictionConfig, signals: NDArray[np.float64]
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Score a batch: ``signals`` is (events x signals) decayed values at each event's time.

    Returns the scores (events,) and each signal's contribution in score points
    (events x signals); a row of contributions sums to its score.
    """
    weighted = signals * config.weights
    raw = weighted.sum(axis=1)
    scores = 100.0 * (1.0 - np.exp(-raw / config.scale))
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(raw[:, None] > 0, weighted / raw[:, None], 0.0)
    return scores, share * scores[:, None]


_S = Signal
DEFAULT_FRICTION = FrictionConfig(
    version="friction-v1",
    scale=2.0,
    signals=(
        _S(name="payment_trouble", label="failed payments", weight=1.0,
           half_life_seconds=6 * HOUR, fed_by={"payment_failed": 1.0},
           resolved_by=("payment_succeeded", "purchase")),
        _S(name="checkout_trouble", label="checkout errors", weight=0.8,
           half_life_seconds=2 * HOUR, fed_by={"checkout_error": 1.0},
           resolved_by=("purchase",)),
        _S(name="search_dead_end", label="searches with no results", weight=0.25,
           half_life_seconds=1 * HOUR, fed_by={"search_no_results": 1.0}),
        _S(name="ui_frustration", label="rage clicks", weight=0.5,
           half_life_seconds=1 * HOUR, fed_by={"rage_click": 0.5, "rage_burst": 1.5},
           counts=("rage_click",)),
        _S(name="navigation_loop", label="pages visited in a loop", weight=0.6,
           half_life_seconds=1 * HOUR, fed_by={"page_loop": 1.0}),
        _S(name="errors", label="errors, crashes and slow pages", weight=0.6,
           half_life_seconds=2 * HOUR,
           fed_by={"error_page": 1.0, "app_crash": 1.5, "slow_page": 0.3}),
        _S(name="access_trouble", label="failed logins and password resets", weight=0.6,
           half_life_seconds=6 * HOUR, fed_by={"login_failed": 1.0, "password_reset": 0.5}),
        _S(name="fulfilment_trouble", label="delayed, cancelled or refunded orders", weight=1.2,
           half_life_seconds=48 * HOUR,
           fed_by={"delivery_delayed": 1.0, "order_cancelled": 1.0, "refund_requested": 0.5}),
        _S(name="help_seeking", label="visits to help pages and contact forms", weight=0.7,
           half_life_seconds=4 * HOUR,
           fed_by={"help_center_view": 0.5, "contact_form_opened": 1.5},
           resolved_by=("support_contact",)),
        _S(name="bad_feedback", label="poor survey scores", weight=1.0,
           half_life_seconds=7 * 24 * HOUR, fed_by={"poor_survey": 1.0}),
        _S(name="cancellation_intent", label="downgrades and cancellation attempts", weight=1.5,
           half_life_seconds=7 * 24 * HOUR,
           fed_by={"plan_downgraded": 1.0, "subscription_cancel_started": 1.5}),
    ),
)  # fmt: skip
