"""Model versions over stream time: which contact-risk version scores an event
(``ModelSchedule``), and what the stream learner publishes for every fit (``ModelRelease``:
the models topic's records and the model history)."""

from __future__ import annotations

import bisect
import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from forewarn.models.features import CONTACT_FEATURES
from forewarn.models.risk import LinearModel, ModelCard, RiskModel, model_file_bytes


@dataclass(frozen=True, slots=True)
class Served:
    """One model version and the event time it scores from (``-inf``: from the start)."""

    serves_from: float
    model: RiskModel


class ModelSchedule:
    """Which version scores an event: the latest whose ``serves_from`` is at or before the
    event's time. Versions learned in the stream are applied at the stream times they name,
    so a replay of the history with the same versions decides what the stream did.

    >>> s = ModelSchedule()
    >>> s.index_at(5.0) is None
    True
    """

    def __init__(self, served: Sequence[Served] = ()) -> None:
        self._served: list[Served] = sorted(served, key=lambda v: v.serves_from)
        self._starts = [v.serves_from for v in self._served]

    def add(self, serves_from: float, model: RiskModel) -> None:
        """Serve ``model`` from ``serves_from`` on (a version already held is not added
        twice)."""
        if any(v.model.version == model.version for v in self._served):
            return
        self._served = sorted([*self._served, Served(serves_from, model)],
                              key=lambda v: v.serves_from)  # fmt: skip
        self._starts = [v.serves_from for v in self._served]

    def with_base(self, model: RiskModel | None) -> ModelSchedule:
        """The same versions with ``model`` serving every event before them (a model from a
        file: it serves until the first learned version's time); None: no base."""
        learned = [v for v in self._served if v.serves_from > -math.inf]
        return ModelSchedule(learned if model is None else [Served(-math.inf, model), *learned])

    def __bool__(self) -> bool:
        return bool(self._served)

    @property
    def served(self) -> tuple[Served, ...]:
        return tuple(self._served)

    @property
    def latest(self) -> RiskModel | None:
        return self._served[-1].model if self._served else None

    def index_at(self, at: float) -> int | None:
        i = bisect.bisect_right(self._starts, at) - 1
        return None if i < 0 else i

    def model(self, index: int) -> RiskModel:
        return self._served[index].model

    def split(self, times: NDArray[np.float64]) -> list[tuple[RiskModel, NDArray[np.int64]]]:
        """(model, rows it scores) for a batch's event times; rows before every version are
        in none (no risk for them)."""
        if not self._served or not len(times):
            return []
        first = self._starts[-1]
        if float(times.min()) >= first:  # nearly every batch: the latest version for all
            return [(self._served[-1].model, np.arange(len(times)))]
        idx = np.searchsorted(np.asarray(self._starts), times, side="right") - 1
        return [
            (self._served[i].model, np.flatnonzero(idx == i)) for i in sorted(set(idx.tolist()))
            if i >= 0
        ]  # fmt: skip


class Verdict(BaseModel):
    """Why a challenger serves or not."""

    model_config = ConfigDict(frozen=True)

    accepted: bool
    reason: str
    champion_log_loss: float | None
    challenger_log_loss: float | None
    positives: int
    rows: int


class ModelRelease(BaseModel):
    """One fit of the stream learner, accepted or refused: a record of the models topic
    (key ``contact_risk/<fitted_at>``), and an entry of the model history."""

    model_config = ConfigDict(frozen=True)

    schema_version: int = 1
    target: str = "contact"
    model_version: str
    #: stream time the fit ran at: it saw the rows whose horizon closed by then
    fitted_at: AwareDatetime
    #: events from this time on are scored by this model (if accepted)
    serves_from: AwareDatetime
    #: the champion it was judged against (None: the first model)
    champion_version: str | None
    verdict: Verdict
    card: ModelCard
    model: LinearModel = Field(description="the fitted numbers (model.json)")

    @property
    def key(self) -> str:
        return f"contact_risk/{self.fitted_at.isoformat()}"

    def risk_model(self, friction_version: str | None = None) -> RiskModel:
        """The release as a servable model (its numbers checked like a loaded artifact);
        ``friction_version``: the one the caller scores friction with (a feature)."""
        problem = self.model.check_shapes()
        if problem is None and self.model.features != list(CONTACT_FEATURES):
            problem = "features: not the contact features this version computes"
        digest = hashlib.sha256(model_file_bytes(self.model)).hexdigest()
        if problem is None and digest != self.card.model_sha256:
            problem = "card.model_sha256: the card names other numbers than the release holds"
        if problem is None and self.card.target != "contact":
            problem = f"card.target: a {self.card.target}-risk model on the contact models topic"
        if problem is None and friction_version not in (None, self.card.friction_version):
            problem = (
                f"card.friction_version: learned from friction {self.card.friction_version!r}, "
                f"this worker scores {friction_version!r}"
            )
        if problem is not None:
            raise ValueError(f"model release {self.model_version}: {problem}")
        return RiskModel(self.card, self.model, nowhere(self.model_version))


def nowhere(version: str) -> Path:
    """Where a model from the models topic comes from, as its ``path``."""
    return Path(f"<models topic: {version}>")
