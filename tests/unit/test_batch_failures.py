"""When a batch goes wrong: failed passes leave no trace, records at fault are isolated, every
store keeps a batch's writes apart until commit, and every output record fits.

No broker: the stores and the output records are plain objects.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray

from forewarn.models.contracts import (
    ALL_CONSENT,
    Consent,
    CustomerProfile,
    DeadLetter,
    DeadLetterReason,
    JourneyEvent,
)
from forewarn.models.features import CHURN_FEATURES
from forewarn.models.risk import RiskModel, default_model_path, load_risk_model
from forewarn.models.session import SessionState
from forewarn.models.state import CustomerState, StoredProfile
from forewarn.models.state_codec import StateDecodeError, decode_state, encode_state
from forewarn.pipeline.clocks import ManualClock
from forewarn.pipeline.codecs import RawRecord, encode
from forewarn.pipeline.engine import ScoringEngine
from forewarn.pipeline.isolation import process_isolating
from forewarn.pipeline.results import BatchResult
from forewarn.pipeline.stores import MemoryStore, MemoryStores
from forewarn.rules.partition_volumes import VOLUME_KEY
from forewarn.rules.rulebook import load_rulebook
from forewarn.streams.scoring.outputs import Limits, OutputTopics, batch_records
from forewarn.streams.scoring.stores import RocksStore, Store
from tests.conftest import POLICIES_RULEBOOK, T0, event

PURCHASES = CHURN_FEATURES.index("purchases_7d")
TOPICS = OutputTopics("actions", "decisions", "dlq", "state")


class ExplodingModel(RiskModel):
    """The shipped churn model with a bug: it raises on a customer with 6+ purchases a week."""

    def score(self, rows: NDArray[np.float64]) -> NDArray[np.float64]:
        if len(rows) and rows[:, PURCHASES].max() >= 6:
            raise FloatingPointError("a bug that only this customer's history reaches")
        return super().score(rows)


def exploding() -> ExplodingModel:
    m = load_risk_model(default_model_path())
    return ExplodingModel(m.card, m.linear, m.path)


def stream() -> list[JourneyEvent]:
    """Ten ordinary customers, and one ("px") who buys seven times."""
    out = []
    for i in range(10):
        c = f"c{i}"
        out += [
            event(c, "checkout_started", T0 + timedelta(minutes=i), n=1),
            event(c, "payment_failed", T0 + timedelta(minutes=i, seconds=20), n=2),
            event(c, "purchase", T0 + timedelta(minutes=i, seconds=50), n=3),
        ]
    out += [event("px", "purchase", T0 + timedelta(minutes=3, seconds=k), n=k) for k in range(7)]
    return sorted(out, key=lambda e: e.occurred_at)


def records(events: list[JourneyEvent]) -> tuple[list[RawRecord], list[RawRecord]]:
    """(event records, profile records) as one partition holds them."""
    profiles = [CustomerProfile(customer_id=c, consent=ALL_CONSENT)
                for c in sorted({e.customer_id for e in events})]  # fmt: skip
    return [
        RawRecord("journey-events", 0, i, e.customer_id.encode(), encode(e))
        for i, e in enumerate(events)
    ], [RawRecord("customer-profiles", 0, i, p.customer_id.encode(), encode(p))
        for i, p in enumerate(profiles)]  # fmt: skip


def engine(churn: RiskModel, stores: MemoryStores) -> ScoringEngine:
    return ScoringEngine(
        clock=ManualClock(T0 + timedelta(hours=1)),
        stores=stores,
        churn=churn,
        rulebook=load_rulebook(POLICIES_RULEBOOK),
    )


def snapshot(stores: MemoryStores) -> dict[str, bytes]:
    return {s.customer_id: encode_state(s) for st in stores.stores.values() for s in st}


def test_a_pass_that_raises_leaves_state_and_stream_time_as_they_were() -> None:
    stores = MemoryStores()
    e = engine(exploding(), stores)
    events, profiles = records(stream())
    e.process(events[:12], profiles)
    stores.partition(0).commit()
    before, stream_time = snapshot(stores), stores.partition(0).stream_time
    with pytest.raises(FloatingPointError):
        e.process(events[12:])  # the rest, with px's seven purchases
    assert snapshot(stores) == before, "a failed pass wrote nothing"
    assert stores.partition(0).stream_time == stream_time


def test_isolation_dead_letters_only_the_records_at_fault_and_decides_the_rest_alike() -> None:
    evs = stream()
    clean = engine(load_risk_model(default_model_path()), MemoryStores())
    expected = clean.process(*records([x for x in evs if x.customer_id != "px"]))

    got, failed = process_isolating(engine(exploding(), MemoryStores()), *records(evs))
    dead = [(d.error_type, d.offset) for d in got.dead_letters]
    px_offsets = [i for i, x in enumerate(evs) if x.customer_id == "px"]
    # px's 6th and 7th purchase reach the bug; everything before them went through
    assert dead == [(DeadLetterReason.processing_error, o) for o in px_offsets[5:]]
    assert all("FloatingPointError" in d.error_detail for d in got.dead_letters)
    assert {d.decision_id for d in got.decisions} == {d.decision_id for d in expected.decisions}
    assert {a.action_id for a in got.actions} == {a.action_id for a in expected.actions}
    assert got.actions, "the stream holds actions to compare"
    n = sum(map(len, records(evs)))
    assert 0 < failed <= 4 * math.ceil(math.log2(n)), "bisection, not one pass per record"


def test_without_a_bug_nothing_is_isolated() -> None:
    got, failed = process_isolating(
        engine(load_risk_model(default_model_path()), MemoryStores()), *records(stream())
    )
    assert failed == 0 and not got.dead_letters


@pytest.fixture(params=["memory", "rocksdb"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    s: Store = MemoryStore() if request.param == "memory" else RocksStore(tmp_path)
    yield s
    s.close()


def test_every_store_keeps_a_batchs_writes_apart_until_commit(store: Store) -> None:
    """One contract for both stores: copies out, pending writes, commit or discard."""
    ann = CustomerState("ann", events_seen=1, first_seen=1.0, last_seen=1.0)
    store.put(ann)
    store.advance(1.0)
    assert store.stream_time == 1.0, "the transaction sees its own stream time"
    store.commit({"ann": encode_state(ann)}, 10)
    got = store.get("ann")
    assert got == ann and got is not ann, "get hands out a copy"
    assert got is not None
    got.events_seen = 99  # changing the copy changes nothing stored
    assert store.get("ann") == ann
    bob = CustomerState("bob", events_seen=2, first_seen=2.0, last_seen=2.0)
    store.put(bob)
    store.delete("ann")
    assert store.get("bob") == bob and store.get("ann") is None, "a batch sees its own writes"
    assert len(store) == 1
    store.advance(2.0)
    store.discard()
    assert store.get("ann") == ann and store.get("bob") is None and len(store) == 1
    assert store.stream_time == 1.0, "an aborted batch's stream time goes too"
    store.put(bob)
    store.advance(2.0)
    store.advance(1.5)  # never back
    store.commit({"bob": encode_state(bob)}, 12)
    assert store.get("bob") == bob and store.checkpoint == 12 and store.stream_time == 2.0
    assert store.approximate_size() >= 1  # RocksDB estimates (and counts overwrites)
    store.clear()
    assert len(store) == 0 and store.checkpoint is None and store.stream_time == -math.inf


def test_every_store_reads_a_restored_customer_on_first_get_and_refuses_a_bad_one(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A restore files changelog records as bytes; each is decoded when its customer comes
    back (a restore of a big partition does not wait on decoding customers who never do),
    and one that cannot be read is refused on every get until a batch replaces it."""
    import forewarn.pipeline.stores as memory_stores

    decoded: list[bytes] = []

    def counting(data: bytes) -> CustomerState:
        decoded.append(data)
        return decode_state(data)

    monkeypatch.setattr(memory_stores, "decode_state", counting)
    ann = CustomerState("ann", events_seen=3, first_seen=1.0, last_seen=5.0)
    store.apply({"ann": encode_state(ann), "bob": b"\x93\x09garbage", "cat": None})
    store.commit({}, 7)
    if isinstance(store, MemoryStore):
        assert decoded == [], "the restore decoded customers"
    assert store.get("ann") == ann and store.get("cat") is None
    for _ in range(2):
        with pytest.raises(StateDecodeError):
            store.get("bob")
    assert [s.customer_id for s in store] == ["ann"], "an unreadable customer is skipped"
    bob = CustomerState("bob", events_seen=1, first_seen=6.0, last_seen=6.0)
    store.put(bob)
    store.commit({"bob": encode_state(bob)}, 8)
    assert store.get("bob") == bob and len(store) == 2


def test_every_store_keeps_a_partition_record_like_a_customer(store: Store) -> None:
    """The volume thresholds: written, discarded, committed and restored with the batch,
    never counted or iterated as a customer."""
    key = VOLUME_KEY
    store.put_record(key, b"v1")
    assert store.get_record(key) == b"v1", "the transaction sees its own record"
    store.discard()
    assert store.get_record(key) is None
    store.put_record(key, b"v1")
    store.commit({key: b"v1"}, 5)  # the worker hands the same bytes to the changelog
    store.put_record(key, b"v2")
    store.discard()
    assert store.get_record(key) == b"v1"
    assert len(store) == 0 and list(store) == [], "not a customer"
    store.clear()
    assert store.get_record(key) is None
    store.apply({key: b"v3", "ann": encode_state(CustomerState("ann"))})
    store.commit({}, 9)
    assert store.get_record(key) == b"v3" and len(store) == 1


def test_a_state_copy_is_independent_of_its_original() -> None:
    e = engine(load_risk_model(default_model_path()), MemoryStores())
    e.process(*records(stream()))
    original = e.stores.partition(0).get("c3")
    assert original is not None
    before = encode_state(original)
    copy = original.copy()
    assert copy == original
    for field in CustomerState.__slots__:  # no mutable part is shared (profiles are frozen)
        a, b = getattr(original, field), getattr(copy, field)
        if isinstance(a, list | dict | SessionState):
            assert a is not b, field
    copy.session.pages.append("/x")
    copy.occurrences.setdefault("purchase", []).append(9e9)
    copy.signals.setdefault(0, [0.0, 0.0])[0] += 5
    copy.contact_times.append(1.0)
    copy.last_contact_by_rule["r"] = 1.0
    assert encode_state(original) == before


def test_a_copy_keeps_every_field_in_its_place() -> None:
    # every field a value no other field has: a copy that swapped two would differ
    session = SessionState("s1", 1.0, 2.0, ["/a"], 3, True, False, True)
    state = CustomerState(
        "c9", StoredProfile(consent=Consent(email=True)), 4.0, 5.0, 6, {0: [7.0, 8.0]},
        {"purchase": [9.0]}, [10], session, 11.0, 12.0, 0.13, 0.14, {"r": 15.0},
        {"email": 16.0}, [17], [18.0], 19,
    )  # fmt: skip
    copy = state.copy()
    assert copy == state
    assert [getattr(copy, f) for f in CustomerState.__slots__] == [
        getattr(state, f) for f in CustomerState.__slots__
    ]
    assert [getattr(copy.session, f) for f in SessionState.__slots__] == [
        getattr(session, f) for f in SessionState.__slots__
    ]


def _result_with(*dead: DeadLetter) -> BatchResult:
    r = BatchResult.empty()
    r.dead_letters += dead
    return r


def test_an_output_that_does_not_fit_becomes_a_dead_letter_and_the_batch_goes_on() -> None:
    big_state: dict[int, dict[str, bytes | None]] = {0: {"c1": b"s" * 5000, "c2": b"small"}}
    result = BatchResult.empty()
    out = batch_records(result, big_state, TOPICS, Limits(4096), T0)
    topics = [(r.topic, r.key) for r in out.records]
    assert ("state", b"c2") in topics and ("state", b"c1") not in topics
    (dl,) = result.dead_letters
    assert (dl.error_type, dl.source_topic) == (DeadLetterReason.too_large, "state")
    assert "5514 bytes, above the limit of 4096" in dl.error_detail
    assert result.stats.dead_letters_by_reason["too_large"] == 1 and out.oversized == 1
    assert all(r.size <= 4096 for r in out.records)


def test_a_dead_letter_shrinks_to_what_the_topic_takes_and_keeps_the_original_hash() -> None:
    from forewarn.pipeline.codecs import dead_letter

    rec = RawRecord("journey-events", 1, 7, b"c1", b"v" * 60_000)
    dl = dead_letter(rec, DeadLetterReason.schema_violation, "bad", T0)
    assert not dl.truncated, "60 KB fits the default bound whole"
    limits = Limits(1_000_000)
    limits.refused("dlq", 50_000)  # the broker refused a 50 KB record on the DLQ topic
    assert limits.of("dlq") == 37_500 and limits.of("actions") == 1_000_000
    out = batch_records(_result_with(dl), {}, TOPICS, limits, T0)
    (rec_out,) = out.records
    assert rec_out.size <= 37_500
    fitted = DeadLetter.model_validate_json(rec_out.value or b"")
    (cut,) = fitted.truncated
    assert cut.part == "value" and cut.original_bytes == 60_000 and cut.kept_bytes < 30_000
    import hashlib

    assert cut.sha256 == hashlib.sha256(b"v" * 60_000).hexdigest()
    assert fitted.original_bytes == dl.original_bytes
