"""The scoring engine: one batch of raw records in, actions, decisions and dead letters out.

Pure (no Kafka): the worker feeds it consumed records, a replay feeds it a file, a scenario
test feeds it hand-made events and a manual clock. Per batch it

1. decodes every record (bad ones become dead letters, never exceptions);
2. applies profiles, then folds each event into its customer's state in the order the
   partition holds them (offset order: the same however the stream is cut into batches,
   so a replay after a crash decides exactly what an uninterrupted run did), writing the
   decayed friction signals at that moment into one row of a matrix;
3. scores the whole matrix at once;
4. evaluates the rules that the events can trigger and the policies; arbitration keeps
   one action per trigger event.

>>> from datetime import UTC, datetime
>>> from forewarn.pipeline.ports import ManualClock
>>> engine = ScoringEngine(clock=ManualClock(datetime(2026, 1, 1, 12, tzinfo=UTC)))
>>> res = engine.process([RawRecord("journey-events", 0, 0, b"c1", b"{")])
>>> res.dead_letters[0].error_type.value
'malformed_json'
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from forewarn.models.churn import ChurnModel
from forewarn.models.contracts import (
    VOCABULARY,
    DeadLetter,
    DeadLetterReason,
    Decision,
    JourneyEvent,
    OutreachAction,
)
from forewarn.models.features import CHURN_FEATURES, churn_features
from forewarn.models.friction import FrictionConfig, friction_scores
from forewarn.models.state import CustomerState, apply_event
from forewarn.pipeline.codecs import (
    DecodedEvent,
    DecodeSettings,
    PartialProfile,
    ProfileTombstone,
    RawRecord,
    dead_letter,
    decode_event,
    decode_profile,
)
from forewarn.pipeline.ports import Clock, MemoryStateStores, StateStores, SystemClock
from forewarn.rules.decide import DecisionMaker, Moment
from forewarn.rules.rulebook import Rulebook, load_rulebook

OTHER = "other"
#: idle customers (no event for this long, in stream time) lose their activity state
DEFAULT_IDLE_TTL_SECONDS = 30 * 24 * 3600.0
#: how often, in stream time, a partition is swept for idle customers
EXPIRY_SWEEP_SECONDS = 3600.0


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

    @property
    def events_accepted(self) -> int:
        return sum(self.events_by_type.values())


@dataclass(frozen=True, slots=True)
class StateChange:
    """One customer's state after a batch: one changelog record (``state`` None deletes it)."""

    partition: int
    customer_id: str
    state: CustomerState | None


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


class ScoringEngine:
    def __init__(
        self,
        *,
        rulebook: Rulebook | None = None,
        friction: FrictionConfig | None = None,
        decode: DecodeSettings | None = None,
        stores: StateStores | None = None,
        clock: Clock | None = None,
        profiles_topic: str = "customer-profiles",
        idle_ttl_seconds: float = DEFAULT_IDLE_TTL_SECONDS,
        churn: ChurnModel | None = None,
    ) -> None:
        self.rulebook = rulebook or load_rulebook()
        self.friction = friction or FrictionConfig.default()
        self.decode = decode or DecodeSettings()
        self.stores: StateStores = stores if stores is not None else MemoryStateStores()
        self.clock: Clock = clock or SystemClock()
        self.profiles_topic = profiles_topic
        self.idle_ttl_seconds = idle_ttl_seconds
        #: the churn-risk model; None scores friction only. Swapped between batches.
        self.churn = churn
        #: the churn feature rows of the last batch's scored events (for parity checks)
        self.last_features: NDArray[np.float64] = np.zeros((0, len(CHURN_FEATURES)))
        #: offline evaluation asks for every scored event: (customer, time, friction, churn)
        self.keep_scores = False
        self.scored: list[tuple[str, float, float, float | None]] = []
        #: partition -> latest event time seen (the clock idle expiry runs on); the worker
        #: sets it when it restores a partition
        self.stream_times: dict[int, float] = {}
        self._known_types = VOCABULARY | self.decode.custom_types

    def _state(
        self, key: tuple[int, str], touched: dict[tuple[int, str], CustomerState]
    ) -> CustomerState:
        state = touched.get(key)
        if state is None:
            state = self.stores.partition(key[0]).get(key[1]) or CustomerState(key[1])
            touched[key] = state
        return state

    def process(self, records: Sequence[RawRecord]) -> BatchResult:
        now = self.clock.now()
        stats = BatchStats()
        dead: list[DeadLetter] = []
        touched: dict[tuple[int, str], CustomerState] = {}
        events: list[tuple[JourneyEvent, RawRecord]] = []

        keep = self.decode.dead_letter_keep_bytes
        for rec in records:
            if rec.topic == self.profiles_topic:
                p = decode_profile(rec, now, keep)
                if isinstance(p, DeadLetter):
                    dead.append(p)
                    continue
                if isinstance(p, PartialProfile):
                    dead.append(p.ignored)
                    p = p.profile
                try:
                    state = self._state((rec.partition, p.customer_id), touched)
                except Exception as error:
                    dead.append(self.processing_error(rec, error))
                    continue
                if isinstance(p, ProfileTombstone):
                    state.profile = None
                    stats.profiles_deleted += 1
                else:
                    state.profile = p
                    stats.profiles_updated += 1
                continue
            d = decode_event(rec, self.decode, now)
            if isinstance(d, DecodedEvent):
                events.append((d.event, rec))
                stats.key_missing += d.key_status == "missing"
                stats.key_mismatch += d.key_status == "mismatch"
            else:
                dead.append(d)

        # Offset order, not a sort by event time: sorting within a batch would make the
        # result depend on where batches are cut. Late events are handled by the state.
        # Nothing the engine keeps changes before the batch has gone through: states are
        # copies until saved, and stream times are the engine's only once the batch is done.
        stream_times = dict(self.stream_times)
        before = {p: stream_times.get(p, -math.inf) for p in {r.partition for _, r in events}}
        n_signals = len(self.friction.signals)
        signals = np.zeros((len(events), n_signals), dtype=np.float64)
        churn = self.churn
        # Churn features are read at the moment of each event (later events of the batch
        # must not leak in); friction, the first feature, is filled in once it is scored.
        features = np.zeros((len(events) if churn else 0, len(CHURN_FEATURES)))
        kept: list[
            tuple[JourneyEvent, float, CustomerState, tuple[str, ...], bool, RawRecord, float]
        ] = []
        for e, rec in events:
            # A record that makes scoring raise is a bug's victim, not bad data: it goes to
            # the DLQ as processing_error and the rest of the batch carries on.
            try:
                state = self._state((rec.partition, e.customer_id), touched)
                if rec.offset <= state.last_offset:
                    stats.replayed += 1
                    continue
                applied = apply_event(state, e, self.friction)
                state.last_offset = rec.offset
            except Exception as error:
                dead.append(self.processing_error(rec, error))
                continue
            if applied.duplicate:
                stats.duplicates += 1
                continue
            if applied.at > stream_times.get(rec.partition, -math.inf):
                stream_times[rec.partition] = applied.at
            stats.events_by_type[e.type if e.type in self._known_types else OTHER] += 1
            state.signal_row(self.friction, applied.at, signals[len(kept)])
            if churn is not None:
                churn_features(state, applied.at, 0.0, features[len(kept)])
            st = stream_times[rec.partition]  # stream time at this record, for "too old"
            kept.append((e, applied.at, state, applied.derived, state.session.in_checkout, rec, st))

        n = len(kept)
        scores, contributions = friction_scores(self.friction, signals[:n])
        risks: NDArray[np.float64] | None = None
        if churn is not None:
            features = features[:n]
            features[:, 0] = scores
            risks = churn.score(features)  # the whole batch at once
        self.last_features = features
        if self.keep_scores:
            self.scored += [
                (e.customer_id, at, float(scores[i]), None if risks is None else float(risks[i]))
                for i, (e, at, *_rest) in enumerate(kept)
            ]
        version = churn.version if churn is not None else self.friction.version
        maker = DecisionMaker(self.rulebook, self.friction, now, version)
        book = self.rulebook
        for row, (e, at, state, derived, in_checkout, rec, st) in enumerate(kept):
            friction = float(scores[row])
            prev, state.last_friction = state.last_friction, friction
            risk = prev_risk = None
            if risks is not None:
                risk = float(risks[row])
                prev_risk, state.last_churn_risk = state.last_churn_risk, risk
            rules = book.rules_for(e.type, derived, prev, friction, prev_risk, risk)
            if rules:  # about 1% of events: only these pay for a Moment
                why: tuple[tuple[str, float], ...] = ()
                # Churn reasons only where the risk is material (the model's operating
                # threshold): "raises the churn risk" would mislead at 0.1%.
                if churn is not None and risk is not None and risk >= churn.threshold:
                    why = tuple(churn.explain(features[row]))
                moment = Moment(
                    e, at, state, derived, in_checkout, friction, prev, contributions[row],
                    risk, prev_risk, why, st,
                )  # fmt: skip
                try:
                    maker.consider(moment, rules)
                except Exception as error:
                    dead.append(self.processing_error(rec, error))
        actions = maker.finish()
        stats.decision_event_ages = [
            (now - d.action.triggered_at).total_seconds() for d in maker.decisions
        ]

        self.stream_times = stream_times
        changes = self._save(touched)
        for part, was in before.items():
            now_st = stream_times.get(part, -math.inf)
            # Sweeps fall on a stream-time grid, so replays sweep at the same moments.
            if was > -math.inf and now_st // EXPIRY_SWEEP_SECONDS > was // EXPIRY_SWEEP_SECONDS:
                expired = self.expire_idle(part, now_st - self.idle_ttl_seconds)
                stats.expired += len(expired)
                changes += expired
        for d in dead:
            stats.dead_letters_by_reason[d.error_type.value] += 1
        times = {p: stream_times[p] for p in {c.partition for c in changes} if p in stream_times}
        return BatchResult(actions, maker.decisions, dead, changes, stats, times)

    def _save(self, touched: dict[tuple[int, str], CustomerState]) -> list[StateChange]:
        changes = []
        for (p, cid), state in touched.items():
            store = self.stores.partition(p)
            if state.active or state.profile is not None:
                store.put(state)
                changes.append(StateChange(p, cid, state))
            else:  # a profile deleted before any event: nothing left to keep
                store.delete(cid)
                changes.append(StateChange(p, cid, None))
        return changes

    def expire_idle(self, partition: int, idle_before: float) -> list[StateChange]:
        """Forget the activity of customers with no event since ``idle_before`` (stream time).

        A customer with a profile keeps just the profile, so consent survives; one without
        is deleted (a tombstone in the changelog).
        """
        store = self.stores.partition(partition)
        changes = []
        for state in store:
            if state.active and state.last_seen < idle_before:
                cid = state.customer_id
                if state.profile is None:
                    store.delete(cid)
                    changes.append(StateChange(partition, cid, None))
                else:
                    kept = CustomerState(cid, profile=state.profile)
                    store.put(kept)
                    changes.append(StateChange(partition, cid, kept))
        return changes

    def processing_error(self, rec: RawRecord, error: Exception) -> DeadLetter:
        """A record that made scoring raise, as a dead letter (used by the worker)."""
        detail = f"{type(error).__name__}: {error}"
        return dead_letter(
            rec,
            DeadLetterReason.processing_error,
            detail,
            self.clock.now(),
            self.decode.dead_letter_keep_bytes,
        )


def process_isolating(
    engine: ScoringEngine, records: Sequence[RawRecord]
) -> tuple[BatchResult, int]:
    """``engine.process``, splitting the batch when a pass raises; and how many passes did.

    Bad data is dead-lettered inside the engine; a pass that raises meets a bug. A failed
    pass leaves no trace (the engine saves state and stream time only when a pass succeeds,
    and hands out copies until then), so the batch is cut in halves, and halves of halves,
    until each record at fault stands alone and goes to the DLQ as ``processing_error``.
    Decisions do not depend on where a batch is cut, so the rest comes out as it would have.
    One bad record costs about two passes over the batch, not one pass per record.
    """
    try:
        return engine.process(records), 0
    except Exception as error:
        if len(records) == 1:
            result = BatchResult.empty()
            result.dead_letters.append(engine.processing_error(records[0], error))
            result.stats.dead_letters_by_reason[DeadLetterReason.processing_error.value] += 1
            return result, 1
    merged, failed = BatchResult.empty(), 1
    half = len(records) // 2
    for part in (records[:half], records[half:]):
        got, n = process_isolating(engine, part)
        merged.extend(got)
        failed += n
    return merged, failed
