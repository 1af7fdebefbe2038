"""What one batch produced: the engine's answer (``BatchResult``) and what it is made of.

Its own module so that the worker, the metrics, the offline tools and the tests can name the
results without importing the engine that makes them.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from forewarn.models.contracts import (
    DeadLetter,
    Decision,
    FeatureRow,
    Milestone,
    OutreachAction,
)
from forewarn.models.state import CustomerState
from forewarn.pipeline.learning_rows import Sampled


@dataclass(slots=True)
class BatchStats:
    """What happened in one batch, for metrics and progress lines."""

    #: event type (``other`` outside the vocabulary) -> accepted events
    events_by_type: Counter[str] = field(default_factory=Counter)
    dead_letters_by_reason: Counter[str] = field(default_factory=Counter)
    duplicates: int = 0
    #: records at or below their customer's last applied offset (a replay after a failure)
    replayed: int = 0
    key_missing: int = 0
    key_mismatch: int = 0
    profiles_updated: int = 0
    profiles_deleted: int = 0
    #: idle customers whose activity expired in this batch
    expired: int = 0
    #: seconds between each decision's trigger event and the decision
    decision_event_ages: list[float] = field(default_factory=list)
    #: wall seconds the engine spent in each phase (PHASES), for the bench and the metrics
    phase_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def events_accepted(self) -> int:
        return sum(self.events_by_type.values())


@dataclass(frozen=True, slots=True)
class StateChange:
    """One customer's state after a batch: one changelog record (``state`` None deletes it)."""

    partition: int
    customer_id: str
    state: CustomerState | None


@dataclass(frozen=True, slots=True)
class ScoredEvent:
    """One event as the engine scored it (offline evaluation reads these)."""

    customer_id: str
    #: event time, epoch seconds
    at: float
    friction: float
    #: None when no churn model is loaded
    churn_risk: float | None
    #: None when no contact-risk version serves at this event
    contact_risk: float | None = None


@dataclass(frozen=True, slots=True)
class VolumeReading:
    """Where a volume-targeted rule stands on a partition after a batch (for the metrics)."""

    partition: int
    rule_id: str
    #: the score a moment needs now (its score's upper bound while warming up)
    threshold: float
    #: actions a day it aims at, and sends, over its recent window
    target_per_day: float
    sent_per_day: float
    warm: bool


@dataclass(slots=True)
class BatchResult:
    actions: list[OutreachAction]
    decisions: list[Decision]
    dead_letters: list[DeadLetter]
    #: the customers whose state this batch changed, one entry each
    changes: list[StateChange]
    stats: BatchStats
    #: partition -> stream time (latest event time seen, epoch seconds) after the batch
    stream_times: dict[int, float] = field(default_factory=dict)
    #: partition -> its own records this batch changed (key -> bytes: the volume thresholds),
    #: for the changelog beside the customers
    partition_records: dict[int, dict[str, bytes]] = field(default_factory=dict)
    volumes: list[VolumeReading] = field(default_factory=list)
    #: support contacts, cancellations and purchases (the milestones topic)
    milestones: Sampled[Milestone] = field(default_factory=Sampled)
    #: with learning on: a sample of moments' contact-risk features (the feature-rows topic)
    feature_rows: Sampled[FeatureRow] = field(default_factory=Sampled)
    #: with ``taps``: every scored event, its churn and contact feature rows (one each)
    scored: list[ScoredEvent] | None = None
    features: NDArray[np.float64] | None = None
    contact_features: NDArray[np.float64] | None = None

    @staticmethod
    def empty() -> BatchResult:
        return BatchResult([], [], [], [], BatchStats())

    def extend(self, other: BatchResult) -> None:
        """Add another (smaller) batch's results to this one."""
        self.actions += other.actions
        self.decisions += other.decisions
        self.dead_letters += other.dead_letters
        self.changes += other.changes
        self.stream_times.update(other.stream_times)
        for p, records in other.partition_records.items():
            self.partition_records.setdefault(p, {}).update(records)
        self.volumes += other.volumes
        self.milestones.extend(other.milestones)
        self.feature_rows.extend(other.feature_rows)
        if other.scored is not None:
            self.scored = (self.scored or []) + other.scored
        self.features = _stacked(self.features, other.features)
        self.contact_features = _stacked(self.contact_features, other.contact_features)
        a, b = self.stats, other.stats
        a.events_by_type.update(b.events_by_type)
        a.dead_letters_by_reason.update(b.dead_letters_by_reason)
        a.duplicates += b.duplicates
        a.replayed += b.replayed
        a.key_missing += b.key_missing
        a.key_mismatch += b.key_mismatch
        a.profiles_updated += b.profiles_updated
        a.profiles_deleted += b.profiles_deleted
        a.expired += b.expired
        a.decision_event_ages += b.decision_event_ages


def _stacked(
    mine: NDArray[np.float64] | None, other: NDArray[np.float64] | None
) -> NDArray[np.float64] | None:
    if other is None:
        return mine
    return other if mine is None else np.vstack([mine, other])
