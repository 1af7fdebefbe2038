"""The scoring engine: one batch of records in, actions, decisions and dead letters out.

Pure (no Kafka): the worker feeds it consumed records, a replay feeds it a file, a scenario
test feeds it hand-made events and a manual clock (``harness.py``). Events and profiles come
as separate inputs, each in the order its partition holds them. A batch goes through five
phases, each once per batch (``process``):

1. **decode** every record: profiles, events, and dead letters for the rest (never an
   exception);
2. **fold** the profiles, then each event, into its customer's state, in offset order (the
   same however the stream is cut into batches, so a replay after a crash decides exactly
   what an uninterrupted run did), skipping replays and duplicates and writing the event's
   friction signals and churn features into one row of a matrix each;
3. **score** friction, churn risk and contact risk for the whole batch at once (the contact
   risk by the model version that serves at each event's time, ``ModelSchedule``);
4. **decide** the rules each event can trigger, their policies and arbitration (one action
   per trigger event);
5. **save** the changed states and the stream time into the stores' transaction, and sweep
   idle customers on the stream-time grid.

Beside the actions, a batch reports its **milestones** (support contacts, cancellations,
purchases) and, when learning is on, a sample of **feature rows** (the contact-risk features
at a moment): what the stream learner learns from.

Nothing is saved before the last phase, and states are copies until then: a batch that
raises leaves the stores as they were (``process_isolating`` relies on it).

>>> from datetime import UTC, datetime
>>> from forewarn.pipeline.clocks import ManualClock
>>> engine = ScoringEngine(clock=ManualClock(datetime(2026, 1, 1, 12, tzinfo=UTC)))
>>> res = engine.process(events=[RawRecord("journey-events", 0, 0, b"c1", b"{")])
>>> res.dead_letters[0].error_type.value
'malformed_json'
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from datetime import datetime
from functools import partial
from time import perf_counter
from typing import Literal

import numpy as np

from forewarn.models.contracts import (
    VOCABULARY,
    DeadLetter,
    DeadLetterReason,
)
from forewarn.models.friction import FrictionConfig, friction_scores
from forewarn.models.releases import ModelSchedule
from forewarn.models.risk import RiskModel
from forewarn.models.state import CustomerState, StoredProfile, apply_event
from forewarn.pipeline.clocks import SystemClock
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
from forewarn.pipeline.learning_rows import feature_rows, milestones
from forewarn.pipeline.phases import BatchRows, Decoded, Folded, FoldedEvent, Scored
from forewarn.pipeline.ports import Clock, StateStore, StateStores
from forewarn.pipeline.results import (
    BatchResult,
    BatchStats,
    ScoredEvent,
    StateChange,
    VolumeReading,
)
from forewarn.pipeline.stores import MemoryStores
from forewarn.rules.decide import DecisionMaker
from forewarn.rules.moment import Moment
from forewarn.rules.partition_volumes import VOLUME_KEY, PartitionVolumes, WrittenVolumes
from forewarn.rules.rulebook import Rulebook, load_rulebook
from forewarn.rules.volume import VolumeTarget

OTHER = "other"
#: idle customers (no event for this long, in stream time) lose their activity state
DEFAULT_IDLE_TTL_SECONDS = 30 * 24 * 3600.0
DAY = 86_400.0
#: how often, in stream time, a partition is swept for idle customers
EXPIRY_SWEEP_SECONDS = 3600.0


#: what ``use`` leaves as it is
KEEP: Literal["keep"] = "keep"


class ScoringEngine:
    def __init__(
        self,
        *,
        rulebook: Rulebook | None = None,
        friction: FrictionConfig | None = None,
        decode: DecodeSettings | None = None,
        stores: StateStores | None = None,
        clock: Clock | None = None,
        idle_ttl_seconds: float = DEFAULT_IDLE_TTL_SECONDS,
        churn: RiskModel | None = None,
        contact: RiskModel | ModelSchedule | None = None,
        feature_rows: float = 0.0,
        taps: bool = False,
    ) -> None:
        self._rulebook = rulebook or load_rulebook()
        self._churn = churn
        self._contact = (
            contact if isinstance(contact, ModelSchedule) else ModelSchedule().with_base(contact)
        )
        #: the share of moments without trouble sampled as feature rows (0: learning off)
        self.feature_rows = feature_rows
        self.friction = friction or FrictionConfig.default()
        self.decode = decode or DecodeSettings()
        self.stores: StateStores = stores if stores is not None else MemoryStores()
        self.clock: Clock = clock or SystemClock()
        self.idle_ttl_seconds = idle_ttl_seconds
        #: results carry every scored event and its feature row (offline evaluation, tests)
        self.taps = taps
        self._known_types = VOCABULARY | self.decode.custom_types
        self._volumes_written = WrittenVolumes()

    @property
    def rulebook(self) -> Rulebook:
        return self._rulebook

    @property
    def churn(self) -> RiskModel | None:
        """The churn-risk model; None scores friction only."""
        return self._churn

    @property
    def contact(self) -> ModelSchedule:
        """The contact-risk model versions and the times each serves from."""
        return self._contact

    def use(
        self,
        *,
        rulebook: Rulebook | None = None,
        churn: RiskModel | Literal["keep"] | None = KEEP,
        contact: RiskModel | Literal["keep"] | None = KEEP,
    ) -> None:
        """Score the next batches with another rulebook, churn model (``churn=None``:
        friction only) or contact-risk model (a file's: it serves every event, except those
        at or after a learned version's time). The worker swaps them between batches, never
        inside one."""
        if rulebook is not None:
            self._rulebook = rulebook
        if churn != KEEP:
            self._churn = churn
        if contact != KEEP:  # the base version; learned ones keep serving from their times
            self._contact = self._contact.with_base(contact)

    def serve(self, contact: RiskModel, serves_from: float) -> None:
        """A stream-learned contact-risk version scores events from ``serves_from`` (event
        time, epoch seconds) on, as a replay with the same versions would."""
        self._contact.add(serves_from, contact)

    def process(
        self, events: Sequence[RawRecord] = (), profiles: Sequence[RawRecord] = ()
    ) -> BatchResult:
        """One batch: journey-event and profile records, each in partition (offset) order."""
        now = self.clock.now()
        stats = BatchStats()
        t0 = perf_counter()
        decoded = self._decode(events, profiles, now, stats)
        t1 = perf_counter()
        folded = self._fold(decoded, stats)
        t2 = perf_counter()
        scored = self._score(folded)
        t3 = perf_counter()
        maker, volumes = self._decide(folded, scored, now, decoded.dead)
        t4 = perf_counter()
        changes = self._save(folded, stats)
        features = stats.phase_seconds.get("features", 0.0)
        stats.phase_seconds.update(
            decode=t1 - t0, fold=t2 - t1 - features, score=t3 - t2, decide=t4 - t3
        )
        for d in decoded.dead:
            stats.dead_letters_by_reason[d.error_type.value] += 1
        stats.decision_event_ages = [
            (now - d.action.triggered_at).total_seconds() for d in maker.decisions
        ]
        after = folded.after
        times = {p: after[p] for p in {c.partition for c in changes} if p in after}
        result = BatchResult(maker.finish(), maker.decisions, decoded.dead, changes, stats, times)
        for p, v in volumes.items():  # saved with the customers, in the same transaction
            data = v.encode()
            self.stores.partition(p).put_record(VOLUME_KEY, data)
            self._volumes_written.wrote(p, data, v)
            result.partition_records[p] = {VOLUME_KEY: data}
            result.volumes += [
                VolumeReading(p, rule, t.threshold, t.target_per_day(), t.per_day()[2], t.warm)
                for rule, t in v.rules.items()
            ]
        moments = [f.event for f in folded.events]
        parts = [f.record.partition for f in folded.events]
        result.milestones = milestones(moments, parts)
        if self.feature_rows > 0:
            x, share = folded.contact_features, self.feature_rows
            result.feature_rows = feature_rows(moments, parts, x, share)
        if self.taps:
            risks = scored.churn
            result.scored = [
                ScoredEvent(f.event.customer_id, f.at, float(scored.friction[i]),
                            None if risks is None else float(risks[i]),
                            None if scored.contact is None or math.isnan(scored.contact[i])
                            else float(scored.contact[i]))
                for i, f in enumerate(folded.events)
            ]  # fmt: skip
            result.features = folded.features
            result.contact_features = folded.contact_features
        stats.phase_seconds["save"] = perf_counter() - t4  # states, volumes, milestones, rows
        return result

    # -- 1. decode --

    def _decode(
        self,
        events: Sequence[RawRecord],
        profiles: Sequence[RawRecord],
        now: datetime,
        stats: BatchStats,
    ) -> Decoded:
        out = Decoded([], [], [])
        keep = self.decode.dead_letter_keep_bytes
        for rec in profiles:
            p = decode_profile(rec, now, keep)
            if isinstance(p, DeadLetter):
                out.dead.append(p)
                continue
            if isinstance(p, PartialProfile):
                out.dead.append(p.ignored)
                p = p.profile
            out.profiles.append((rec, p))
        for rec in events:
            d = decode_event(rec, self.decode, now)
            if isinstance(d, DecodedEvent):
                out.events.append((d.event, rec))
                stats.key_missing += d.key_status == "missing"
                stats.key_mismatch += d.key_status == "mismatch"
            else:
                out.dead.append(d)
        return out

    # -- 2. fold --

    def _state(
        self, key: tuple[int, str], touched: dict[tuple[int, str], CustomerState]
    ) -> CustomerState:
        state = touched.get(key)
        if state is None:
            state = self.stores.partition(key[0]).get(key[1]) or CustomerState(key[1])
            touched[key] = state
        return state

    def _fold_profiles(
        self, decoded: Decoded, touched: dict[tuple[int, str], CustomerState], stats: BatchStats
    ) -> None:
        for rec, p in decoded.profiles:
            try:
                state = self._state((rec.partition, p.customer_id), touched)
            except Exception as error:
                decoded.dead.append(self.processing_error(rec, error))
                continue
            if isinstance(p, ProfileTombstone):
                state.profile = None
                stats.profiles_deleted += 1
            else:
                state.profile = StoredProfile.of(p)
                stats.profiles_updated += 1

    def _fold(self, decoded: Decoded, stats: BatchStats) -> Folded:
        touched: dict[tuple[int, str], CustomerState] = {}
        self._fold_profiles(decoded, touched, stats)  # profiles first, then each event
        events = decoded.events
        before = {p: self.stores.partition(p).stream_time for p in {r.partition for _, r in events}}
        # Stream times are the stores' only once the batch is saved (phase 5).
        after = dict(before)
        # Features are read at the moment of each event (later events of the batch must
        # not leak in); friction, the first feature, is filled in once it is scored.
        contact = bool(self._contact) or self.feature_rows > 0
        rows = BatchRows(self.friction, churn=self._churn is not None, contact=contact)
        folded: list[FoldedEvent] = []
        feature_s = 0.0
        kinds: list[str] = []  # counted once a batch (a Counter per event cost 0.2 µs)
        for e, rec in events:
            # A record that makes scoring raise is a bug's victim, not bad data: it goes to
            # the DLQ as processing_error and the rest of the batch carries on.
            try:
                state = self._state((rec.partition, e.customer_id), touched)
                if rec.offset <= state.last_offset:
                    stats.replayed += 1
                    continue
                seen_before = state.last_seen
                applied = apply_event(state, e, self.friction)
                state.last_offset = rec.offset
            except Exception as error:
                decoded.dead.append(self.processing_error(rec, error))
                continue
            if applied.duplicate:
                stats.duplicates += 1
                continue
            st = after[rec.partition]
            if applied.at > st:
                st = after[rec.partition] = applied.at
            kinds.append(e.type)
            started = perf_counter()
            rows.read(state, applied.at)
            feature_s += perf_counter() - started
            # active customers are counted by calendar day (midnight UTC), as volume targets
            # and their measures count them
            new_day = seen_before == -math.inf or applied.at // DAY > seen_before // DAY
            folded.append(
                FoldedEvent(e, applied.at, state, applied.derived, state.session.in_checkout,
                            rec, st, new_day)
            )  # fmt: skip
        stats.phase_seconds["features"] = feature_s
        known = self._known_types
        for kind, n in Counter(kinds).items():
            stats.events_by_type[kind if kind in known else OTHER] += n
        signals, features, contact_x = rows.matrices()
        return Folded(folded, signals, features, contact_x, touched, before, after)

    # -- 3. score --

    def _score(self, folded: Folded) -> Scored:
        friction, contributions = friction_scores(self.friction, folded.signals)
        risks = None
        if self._churn is not None:
            folded.features[:, 0] = friction
            risks = self._churn.score(folded.features)  # the whole batch at once
        if len(folded.contact_features):
            folded.contact_features[:, 0] = friction
        if not self._contact:
            return Scored(friction, contributions, risks, None)
        x = folded.contact_features
        contact = np.full(len(x), np.nan)
        index = np.full(len(x), -1, dtype=np.int64)
        at = np.fromiter((f.at for f in folded.events), dtype=np.float64, count=len(x))
        models: list[RiskModel] = []
        for model, rows in self._contact.split(at):
            contact[rows] = model.score(x[rows])
            index[rows] = len(models)
            models.append(model)
        return Scored(friction, contributions, risks, contact, tuple(models), index)

    # -- 4. decide --

    def _decide(
        self, folded: Folded, scored: Scored, now: datetime, dead: list[DeadLetter]
    ) -> tuple[DecisionMaker, dict[int, PartitionVolumes]]:
        churn, book = self._churn, self._rulebook
        version = churn.version if churn is not None else self.friction.version
        maker = DecisionMaker(book, self.friction, now, version)
        # Python floats, read once: a numpy scalar per event and score cost ~0.15 µs each
        frictions = scored.friction.tolist()
        risks = None if scored.churn is None else scored.churn.tolist()
        contact_risks = None if scored.contact is None else scored.contact.tolist()
        targets = book.volume_targets
        volumes: dict[int, PartitionVolumes] = {}
        for row, f in enumerate(folded.events):
            state = f.state
            # every event counts towards the volumes, acted on or not
            vol = self._volumes(f, volumes, targets) if targets else None
            friction = frictions[row]
            prev, state.last_friction = state.last_friction, friction
            risk = prev_risk = None
            if risks is not None:
                risk = risks[row]
                prev_risk, state.last_churn_risk = state.last_churn_risk, risk
            contact = prev_contact = None
            if contact_risks is not None and not math.isnan(contact_risks[row]):
                contact = contact_risks[row]
                prev_contact, state.last_contact_risk = state.last_contact_risk, contact
            rules = book.rules_for(
                f.event.type, f.derived, prev, friction, prev_risk, risk, prev_contact, contact
            )
            if not rules:  # most events: only the rest pay for a Moment
                continue
            contact_model = scored.contact_model(row)
            moment = Moment(
                event=f.event,
                at=f.at,
                state=state,
                derived=f.derived,
                in_checkout=f.in_checkout,
                friction=friction,
                prev_friction=prev,
                contributions=scored.contributions[row],
                churn=risk,
                prev_churn=prev_risk,
                contact=contact,
                prev_contact=prev_contact,
                contact_version=None if contact_model is None else contact_model.version,
                stream_time=f.stream_time,
                explain_risks=partial(self._reasons, row, risk, contact_model, folded),
            )
            try:
                maker.consider(moment, rules, vol)
            except Exception as error:
                dead.append(self.processing_error(f.record, error))
        return maker, volumes

    def _volumes(
        self, f: FoldedEvent, volumes: dict[int, PartitionVolumes], targets: dict[str, VolumeTarget]
    ) -> PartitionVolumes:
        """The partition's volume thresholds (read once a batch), told of active customers."""
        p = f.record.partition
        vol = volumes.get(p)
        if vol is None:
            saved = self.stores.partition(p).get_record(VOLUME_KEY)
            vol = volumes[p] = self._volumes_written.take(p, saved, targets, f.stream_time)
        if f.new_day:
            vol.customer_active(f.at)
        return vol

    def _reasons(
        self, row: int, risk: float | None, contact_model: RiskModel | None, folded: Folded
    ) -> tuple[tuple[tuple[str, float], ...], tuple[tuple[str, float], ...]]:
        """What raises the churn risk and the contact risk most, in words."""
        churn = self._churn
        why: tuple[tuple[str, float], ...] = ()
        # Churn reasons only where the risk is material (the model's operating threshold):
        # "raises the churn risk" would mislead at 0.1%.
        if churn is not None and risk is not None and risk >= churn.threshold:
            why = tuple(churn.explain(folded.features[row]))
        contact_why: tuple[tuple[str, float], ...] = ()
        if contact_model is not None and self._rulebook.uses_contact_risk:
            contact_why = tuple(contact_model.explain(folded.contact_features[row]))
        return why, contact_why

    # -- 5. save and sweep --

    def _save(self, folded: Folded, stats: BatchStats) -> list[StateChange]:
        changes = []
        for (p, cid), state in folded.touched.items():
            store = self.stores.partition(p)
            if state.active or state.profile is not None:
                store.put(state)
                changes.append(StateChange(p, cid, state))
            else:  # a profile deleted before any event: nothing left to keep
                store.delete(cid)
                changes.append(StateChange(p, cid, None))
        for p, was in folded.before.items():
            store = self.stores.partition(p)
            now_st = folded.after[p]
            store.advance(now_st)
            # Sweeps fall on a stream-time grid, so replays sweep at the same moments.
            if was > -math.inf and now_st // EXPIRY_SWEEP_SECONDS > was // EXPIRY_SWEEP_SECONDS:
                expired = self.expire_idle(p, now_st - self.idle_ttl_seconds)
                stats.expired += len(expired)
                changes += expired
        return changes

    def expire_idle(self, partition: int, idle_before: float) -> list[StateChange]:
        """Forget the activity of customers with no event since ``idle_before`` (stream time).

        A customer with a profile keeps just the profile, so consent survives; one without
        is deleted (a tombstone in the changelog).
        """
        store: StateStore = self.stores.partition(partition)
        changes = []
        for state in store.seen_before(idle_before):
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
        """A record that made scoring raise, as a dead letter."""
        detail = f"{type(error).__name__}: {error}"
        return dead_letter(
            rec,
            DeadLetterReason.processing_error,
            detail,
            self.clock.now(),
            self.decode.dead_letter_keep_bytes,
        )
