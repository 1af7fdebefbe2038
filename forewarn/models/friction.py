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
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from pydantic import BaseModel, ConfigDict, Field

from forewarn.models.config_file import load_yaml_file

HOUR = 3600.0


class Signal(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

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

    model_config = ConfigDict(frozen=True, extra="forbid")

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


def friction_path() -> Path:
    """The friction config shipped with Forewarn (``forewarn/models/friction.yaml``)."""
    return Path(__file__).parent / "friction.yaml"


def load_friction(path: Path | None = None) -> FrictionConfig:
    """A friction config file; ``ConfigFileError`` naming file, line and field if it is wrong."""
    return load_yaml_file(path or friction_path(), FrictionConfig)


DEFAULT_FRICTION = load_friction()
