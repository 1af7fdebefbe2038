"""The expiry sweep's reading of a store (``pipeline/last_seen.py``): it finds exactly the
customers a walk over the whole store finds, whatever was written, committed, aborted,
restored or cleared before; and it reads what expires, not the partition."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from forewarn.models.state import CustomerState
from forewarn.models.state_codec import encode_state, last_seen_of
from forewarn.pipeline.last_seen import HOUR_SECONDS, LastSeenIndex
from forewarn.pipeline.stores import MemoryStore
from forewarn.streams.scoring.stores import RocksStore

CUSTOMERS = [f"c{i}" for i in range(8)]

#: one step on a store: (what, customer, time in hours, whether it has events)
steps = st.lists(
    st.tuples(
        st.sampled_from(["put", "delete", "commit", "discard", "restore", "sweep", "clear"]),
        st.sampled_from(CUSTOMERS),
        st.floats(min_value=0, max_value=72, allow_nan=False).map(lambda h: round(h, 3)),
        st.booleans(),
    ),
    max_size=60,
)


def state(cid: str, hours: float, active: bool) -> CustomerState:
    if not active:  # a profile alone (the codec keeps no time for it)
        return CustomerState(cid)
    return CustomerState(cid, first_seen=0.0, last_seen=hours * 3600, events_seen=1)


def walked(store: MemoryStore | RocksStore, cutoff: float) -> list[str]:
    """What the sweep did before: every customer, read one by one."""
    return sorted(s.customer_id for s in store if s.active and s.last_seen < cutoff)


def run(store: MemoryStore | RocksStore, ops: list[tuple[str, str, float, bool]]) -> None:
    for what, cid, hours, active in ops:
        if what == "put":
            store.put(state(cid, hours, active))
        elif what == "delete":
            store.delete(cid)
        elif what == "commit":  # with the bytes a worker writes (the memory store ignores them)
            pending = store._pending.items()
            store.commit({c: None if s is None else encode_state(s) for c, s in pending}, None)
        elif what == "discard":
            store.discard()
        elif what == "restore":  # a changelog record taken as bytes, or a tombstone
            store.apply({cid: encode_state(state(cid, hours, active)) if hours > 1 else None})
        elif what == "clear":
            store.clear()
        cutoff = hours * 3600
        found = [s.customer_id for s in store.seen_before(cutoff)]
        assert found == walked(store, cutoff), (what, cid, hours)


@settings(max_examples=200, deadline=None)
@given(steps)
def test_the_sweep_finds_what_walking_the_memory_store_finds(
    ops: list[tuple[str, str, float, bool]],
) -> None:
    run(MemoryStore(), ops)


@settings(max_examples=40, deadline=None)
@given(steps)
def test_the_sweep_finds_what_walking_a_rocksdb_store_finds(
    tmp_path_factory: pytest.TempPathFactory, ops: list[tuple[str, str, float, bool]]
) -> None:
    path = tmp_path_factory.mktemp("rocks")
    store = RocksStore(path)
    try:
        run(store, ops)
    finally:
        store.close()


def test_a_store_opened_from_disk_finds_what_it_held(tmp_path: Path) -> None:
    store = RocksStore(tmp_path)
    old, new = state("old", 1.0, True), state("new", 30.0, True)
    for s in (old, new):
        store.put(s)
    store.commit({s.customer_id: encode_state(s) for s in (old, new)}, 7)
    store.close()
    reopened = RocksStore(tmp_path)
    try:
        assert [s.customer_id for s in reopened.seen_before(10 * 3600)] == ["old"]
    finally:
        reopened.close()


class CountingStore(MemoryStore):
    """A memory store that counts the customers a sweep reads."""

    reads = 0

    def _stored_last_seen(self, customer_id: str) -> float | None:
        self.reads += 1
        return super()._stored_last_seen(customer_id)


def test_a_sweep_reads_what_expires_not_the_partition() -> None:
    store = CountingStore()
    busy = [state(f"busy{i}", 100.0 + i / 1000, True) for i in range(2_000)]
    idle = [state(f"idle{i}", 2.0, True) for i in range(5)]
    for s in busy + idle:
        store.put(s)
    store.commit()
    expired = store.seen_before(50 * 3600)
    assert [s.customer_id for s in expired] == sorted(s.customer_id for s in idle)
    assert store.reads == len(idle)  # the busy hours lie after the cutoff: never read
    for s in expired:  # the engine forgets them
        store.delete(s.customer_id)
    store.commit()
    store.reads = 0
    # the next sweep sees them gone and drops them (the batch that expired them might have
    # aborted); the one after reads nothing at all
    assert store.seen_before(60 * 3600) == [] and store.reads == len(idle)
    store.reads = 0
    assert store.seen_before(60 * 3600) == [] and store.reads == 0


def test_restored_customers_stay_bytes_through_a_sweep() -> None:
    """A restore keeps records as bytes until a customer is read (the memory measured per
    customer); a sweep reads only their times and decodes only those it expires."""
    store = MemoryStore()
    kept = [state(f"k{i}", 100.0, True) for i in range(50)]
    gone = state("gone", 1.0, True)
    store.apply({s.customer_id: encode_state(s) for s in [*kept, gone]})
    assert [s.customer_id for s in store.seen_before(50 * 3600)] == ["gone"]
    assert all(isinstance(store._states[s.customer_id], bytes) for s in kept)


def test_an_aborted_expiry_is_found_again() -> None:
    store = MemoryStore()
    store.put(state("ann", 1.0, True))
    store.commit()
    assert [s.customer_id for s in store.seen_before(5 * 3600)] == ["ann"]
    store.delete("ann")
    store.discard()  # the batch that expired her aborted
    assert [s.customer_id for s in store.seen_before(5 * 3600)] == ["ann"]


def test_the_last_seen_time_is_read_without_decoding_the_rest() -> None:
    s = state("c1", 12.25, True)
    assert last_seen_of(encode_state(s)) == s.last_seen == 12.25 * HOUR_SECONDS
    assert last_seen_of(encode_state(CustomerState("c2"))) == -math.inf


def test_a_customer_written_in_many_batches_of_an_hour_is_filed_about_once() -> None:
    """The index costs ~8 bytes a customer-hour (the memory store's 2 KiB budget): writes
    in many batches of the same hour do not pile up."""
    index = LastSeenIndex()
    for i in range(1_000):
        index.file("busy", 3_600.0 + i)
        index.file(f"other{i % 10}", 3_601.0)
    assert len(index) <= 2 * 11 + 1
    held = {"busy": 4_599.0, **{f"other{i}": 3_601.0 for i in range(10)}}
    assert index.seen_before(1e9, held.get, held.items) == sorted(held)
