"""The scoring engine: one batch of raw records in, actions, decisions and dead letters out.

Pure (no Kafka): the worker feeds it consumed records, a replay feeds it a file, a scenario
test feeds it hand-made events and a manual clock. Per batch it

1. decodes every record (bad ones become dead letters, never exceptions);
2. applies profiles, then folds each event into its customer's state in event order,
   writing the decayed friction signals at that moment into one row of a matrix;
3. scores the whole matrix at once;
4. evaluates the rules that the events can trigger and the policies, and settles
   arbitration (one action per customer per batch).

>>> from datetime import UTC, datetime
>>> from forewarn.models.ports import ManualClock, MemoryStateStore
>>> engine = ScoringEngine(clock=ManualClock(datetime(2026, 1, 1, 12, tzinfo=UTC)))
>>> res = engine.process([RawRecord("journey-events", 0, 0, b"c1", b"{")])
>>> res.dead_letters[0].error_type.value
'malformed_json'
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from forewarn.models.contracts import (
    VOCABULARY,
    DeadLetter,
    DeadLetterReason,
    Decision,
    JourneyEvent,
    OutreachAction,
)
from forewarn.models.friction import FrictionConfig, friction_scores
from forewarn.models.ports import Clock, MemoryStateStore, StateStore, SystemClock
from forewarn.models.state import CustomerState, apply_event
from forewarn.rules.decide import DecisionMaker, Moment
from forewarn.rules.rulebook import Rulebook, load_rulebook
from forewarn.streams.codecs import (
    DecodedEvent,
    DecodeSettings,
    ProfileTombstone,
    RawRecord,
    dead_letter,
    decode_event,
    decode_profile,
)

OTHER = "other"


@dataclass(slots=True)
class BatchStats:
    """What happened in one batch, for metrics and progress lines."""

    #: event type (``other`` outside the vocabulary) -> accepted events
    events_by_type: Counter[str] = field(default_factory=Counter)
    dead_letters_by_reason: Counter[str] = field(default_factory=Counter)
    duplicates: int = 0
    key_missing: int = 0
    key_mismatch: int = 0
    profiles_updated: int = 0
    profiles_deleted: int = 0
    #: seconds between each decision's trigger event and the decision
    decision_event_ages: list[float] = field(default_factory=list)

    @property
    def events_accepted(self) -> int:
        return sum(self.events_by_type.values())


@dataclass(slots=True)
class BatchResult:
    actions: list[OutreachAction]
    decisions: list[Decision]
    dead_letters: list[DeadLetter]
    #: the customers whose state this batch changed (one changelog record each)
    touched: list[CustomerState]
    stats: BatchStats

    @staticmethod
    def empty() -> BatchResult:
        return BatchResult([], [], [], [], BatchStats())

    def extend(self, other: BatchResult) -> None:
        """Add another (smaller) batch's results to this one."""
        self.actions += other.actions
        self.decisions += other.decisions
        self.dead_letters += other.dead_letters
        self.touched += other.touched
        a, b = self.stats, other.stats
        a.events_by_type.update(b.events_by_type)
        a.dead_letters_by_reason.update(b.dead_letters_by_reason)
        a.duplicates += b.duplicates
        a.key_missing += b.key_missing
        a.key_mismatch += b.key_mismatch
        a.profiles_updated += b.profiles_updated
        a.profiles_deleted += b.profiles_deleted
        a.decision_event_ages += b.decision_event_ages


class OutputSink(Protocol):
    """Where a batch's results go: Kafka in the worker, memory or files elsewhere."""

    def publish(self, result: BatchResult) -> None: ...


class ScoringEngine:
    def __init__(
        self,
        *,
        rulebook: Rulebook | None = None,
        friction: FrictionConfig | None = None,
        decode: DecodeSettings | None = None,
        store: StateStore | None = None,
        clock: Clock | None = None,
        profiles_topic: str = "customer-profiles",
    ) -> None:
        self.rulebook = rulebook or load_rulebook()
        self.friction = friction or FrictionConfig.default()
        self.decode = decode or DecodeSettings()
        self.store: StateStore = store if store is not None else MemoryStateStore()
        self.clock: Clock = clock or SystemClock()
        self.profiles_topic = profiles_topic
        self._known_types = VOCABULARY | self.decode.custom_types

    def _state(self, customer_id: str, touched: dict[str, CustomerState]) -> CustomerState:
        state = touched.get(customer_id)
        if state is None:
            state = self.store.get(customer_id) or CustomerState(customer_id)
            touched[customer_id] = state
        return state

    def process(self, records: Sequence[RawRecord]) -> BatchResult:
        now = self.clock.now()
        stats = BatchStats()
        dead: list[DeadLetter] = []
        touched: dict[str, CustomerState] = {}
        events: list[tuple[JourneyEvent, RawRecord]] = []

        for rec in records:
            if rec.topic == self.profiles_topic:
                p = decode_profile(rec, now)
                if isinstance(p, DeadLetter):
                    dead.append(p)
                elif isinstance(p, ProfileTombstone):
                    self._state(p.customer_id, touched).profile = None
                    stats.profiles_deleted += 1
                else:
                    self._state(p.customer_id, touched).profile = p
                    stats.profiles_updated += 1
                continue
            d = decode_event(rec, self.decode, now)
            if isinstance(d, DecodedEvent):
                events.append((d.event, rec))
                stats.key_missing += d.key_status == "missing"
                stats.key_mismatch += d.key_status == "mismatch"
            else:
                dead.append(d)

        # Event order within a customer is event time; a stable sort keeps arrival order
        # for ties, so replays of the same records give the same result.
        events.sort(key=lambda pair: pair[0].occurred_at)
        n_signals = len(self.friction.signals)
        signals = np.zeros((len(events), n_signals), dtype=np.float64)
        kept: list[tuple[JourneyEvent, float, CustomerState, tuple[str, ...], bool, RawRecord]] = []
        for e, rec in events:
            # A record that makes scoring raise is a bug's victim, not bad data: it goes to
            # the DLQ as processing_error and the rest of the batch carries on.
            try:
                state = self._state(e.customer_id, touched)
                applied = apply_event(state, e, self.friction)
            except Exception as error:
                dead.append(self.processing_error(rec, error))
                continue
            if applied.duplicate:
                stats.duplicates += 1
                continue
            stats.events_by_type[e.type if e.type in self._known_types else OTHER] += 1
            state.signal_row(self.friction, applied.at, signals[len(kept)])
            kept.append((e, applied.at, state, applied.derived, state.session.in_checkout, rec))

        scores, contributions = friction_scores(self.friction, signals[: len(kept)])
        maker = DecisionMaker(self.rulebook, self.friction, now, self.friction.version)
        book = self.rulebook
        for row, (e, at, state, derived, in_checkout, rec) in enumerate(kept):
            friction = float(scores[row])
            prev, state.last_friction = state.last_friction, friction
            rules = book.rules_for(e.type, derived, prev, friction)
            if rules:  # about 1% of events: only these pay for a Moment
                moment = Moment(
                    e, at, state, derived, in_checkout, friction, prev, contributions[row]
                )
                try:
                    maker.consider(moment, rules)
                except Exception as error:
                    dead.append(self.processing_error(rec, error))
        actions = maker.finish()
        stats.decision_event_ages = [
            (now - d.action.triggered_at).total_seconds() for d in maker.decisions
        ]

        for state in touched.values():
            self.store.put(state)
        for d in dead:
            stats.dead_letters_by_reason[d.error_type.value] += 1
        return BatchResult(actions, maker.decisions, dead, list(touched.values()), stats)

    def processing_error(self, rec: RawRecord, error: Exception) -> DeadLetter:
        """A record that made scoring raise, as a dead letter (used by the worker)."""
        detail = f"{type(error).__name__}: {error}"
        return dead_letter(rec, DeadLetterReason.processing_error, detail, self.clock.now())
