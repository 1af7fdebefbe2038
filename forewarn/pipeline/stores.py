"""State stores in memory: the ``StateStore`` contract (``ports.py``) without a disk.

The worker uses them when ``FOREWARN_STATE_DIR`` is not set (the changelog is the durable
copy), offline replays and tests use them always.

>>> from forewarn.models.state import CustomerState
>>> store = MemoryStore()
>>> store.put(CustomerState("ann", events_seen=1))
>>> store.get("ann").events_seen, len(store)      # the transaction sees its own writes
(1, 1)
>>> store.discard(); store.get("ann") is None     # an aborted batch leaves nothing
True
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator

from forewarn.models.state import CustomerState
from forewarn.models.state_codec import StateDecodeError, decode_state, last_seen_of
from forewarn.pipeline.last_seen import LastSeenIndex
from forewarn.pipeline.ports import Encoded, is_partition_record


def stored_time(value: bytes | None) -> float | None:
    """A stored record's last event time (None: no record, or an unreadable one)."""
    try:
        return None if value is None else last_seen_of(value)
    except StateDecodeError:
        return None


class PendingWrites:
    """The transaction every store keeps the same way: a batch's writes and stream time wait
    here, seen by its own reads, until ``commit`` (the store's) or ``discard``."""

    _stream_time: float

    def __init__(self) -> None:
        self._pending: dict[str, CustomerState | None] = {}
        self._pending_stream_time: float | None = None
        self._pending_records: dict[str, bytes] = {}
        #: the committed customers by the hour they were last seen in (the expiry sweep)
        self._last_seen = LastSeenIndex()

    @property
    def stream_time(self) -> float:
        pending = self._pending_stream_time
        return self._stream_time if pending is None else pending

    def get(self, customer_id: str) -> CustomerState | None:
        if customer_id in self._pending:
            pending = self._pending[customer_id]
            return None if pending is None else pending.copy()
        return self._committed(customer_id)

    def _committed(self, customer_id: str) -> CustomerState | None:
        """The customer as last committed: a copy the caller may change."""
        raise NotImplementedError

    def get_record(self, key: str) -> bytes | None:
        if key in self._pending_records:
            return self._pending_records[key]
        return self._committed_record(key)

    def _committed_record(self, key: str) -> bytes | None:
        raise NotImplementedError

    def put_record(self, key: str, value: bytes) -> None:
        self._pending_records[key] = value

    def put(self, state: CustomerState) -> None:
        self._pending[state.customer_id] = state

    def delete(self, customer_id: str) -> None:
        self._pending[customer_id] = None

    def advance(self, stream_time: float) -> None:
        self._pending_stream_time = max(self.stream_time, stream_time)

    def discard(self) -> None:
        self._pending.clear()
        self._pending_stream_time = None
        self._pending_records.clear()

    def seen_before(self, cutoff: float) -> list[CustomerState]:
        """The active customers last seen before ``cutoff`` (stream time), the transaction's
        writes included, in id order: what an expiry sweep forgets, found by reading the
        hours that fell behind the cutoff, not the whole partition (``last_seen.py``)."""
        found = []
        for cid in self._last_seen.seen_before(cutoff, self._stored_last_seen, self._stored):
            if cid in self._pending:
                continue  # the transaction's own version is judged below
            try:
                state = self._committed(cid)
            except StateDecodeError:  # its events are dead-lettered when they come
                continue
            if state is not None:
                found.append(state)
        found += [
            s for s in self._pending.values() if s is not None and s.active and s.last_seen < cutoff
        ]
        return sorted(found, key=lambda s: s.customer_id)

    def _stored_last_seen(self, customer_id: str) -> float | None:
        """The committed customer's last event time (None: not held, or unreadable)."""
        raise NotImplementedError

    def _stored(self) -> Iterable[tuple[str, float | None]]:
        """Every committed customer, with its last event time."""
        raise NotImplementedError

    def _file_pending(self) -> None:
        """The transaction's customers, as it commits, into the last-seen index."""
        for pending in self._pending.values():
            if pending is not None:
                self._last_seen.file(pending.customer_id, pending.last_seen)


class MemoryStore(PendingWrites):
    """One partition's customers in memory, in two layers: committed, and the transaction."""

    def __init__(self) -> None:
        super().__init__()
        #: restored customers stay as their changelog bytes until first read: a restore only
        #: files records (as RocksDB does), and a customer who never comes back costs only
        #: those bytes
        self._states: dict[str, CustomerState | bytes] = {}
        self._records: dict[str, bytes] = {}
        self.checkpoint: int | None = None
        self._stream_time = -math.inf
        #: customers whose changelog record could not be read, with the reason
        self.unreadable: dict[str, str] = {}

    def _committed(self, customer_id: str) -> CustomerState | None:
        if customer_id in self.unreadable:
            # Raised to the engine, which dead-letters the customer's records with it: an
            # operator sees it and can delete the record (a tombstone) to start afresh.
            raise StateDecodeError(f"{customer_id}: {self.unreadable[customer_id]}")
        state = self._states.get(customer_id)
        if isinstance(state, bytes):
            return self._decode(customer_id, state)  # a fresh object: no copy needed
        return None if state is None else state.copy()

    def _decode(self, customer_id: str, value: bytes) -> CustomerState:
        try:
            return decode_state(value)
        except StateDecodeError as e:
            del self._states[customer_id]
            self.unreadable[customer_id] = str(e)
            raise StateDecodeError(f"{customer_id}: {e}") from e

    def _committed_record(self, key: str) -> bytes | None:
        return self._records.get(key)

    def _stored_last_seen(self, customer_id: str) -> float | None:
        held = self._states.get(customer_id)
        if isinstance(held, CustomerState):
            return held.last_seen
        return stored_time(held)  # a restored record stays bytes

    def _stored(self) -> Iterable[tuple[str, float | None]]:
        return [(cid, self._stored_last_seen(cid)) for cid in list(self._states)]

    def commit(self, encoded: Encoded | None = None, checkpoint: int | None = None) -> None:
        self._file_pending()
        for cid, pending in self._pending.items():
            self.unreadable.pop(cid, None)
            if pending is None:
                self._states.pop(cid, None)
            else:
                self._states[cid] = pending
        self._pending.clear()
        self._records.update(self._pending_records)
        self._pending_records.clear()
        if self._pending_stream_time is not None:
            self._stream_time, self._pending_stream_time = self._pending_stream_time, None
        if checkpoint is not None:
            self.checkpoint = checkpoint

    def apply(self, encoded: Encoded) -> None:
        for cid, value in encoded.items():
            if is_partition_record(cid):
                if value is None:
                    self._records.pop(cid, None)
                else:
                    self._records[cid] = value
                continue
            self.unreadable.pop(cid, None)
            if value is None:
                self._states.pop(cid, None)
            else:  # read, or refused, on first ``get``
                self._states[cid] = value
                self._last_seen.restored(cid)

    def clear(self) -> None:
        self._last_seen.clear()
        self._states.clear()
        self._pending.clear()
        self._records.clear()
        self._pending_records.clear()
        self.unreadable.clear()
        self.checkpoint = None
        self._stream_time, self._pending_stream_time = -math.inf, None

    def approximate_size(self) -> int:
        return len(self)

    def close(self) -> None:
        """Nothing to release in memory."""

    def __len__(self) -> int:
        n = len(self._states)
        for cid, pending in self._pending.items():
            held = cid in self._states
            n += (pending is not None and not held) - (pending is None and held)
        return n

    def __iter__(self) -> Iterator[CustomerState]:
        for cid, held in list(self._states.items()):
            if cid in self._pending:
                continue
            if not isinstance(held, bytes):
                yield held
                continue
            try:
                state = self._states[cid] = self._decode(cid, held)
            except StateDecodeError:  # its events are dead-lettered when they come
                continue
            yield state
        for pending in list(self._pending.values()):
            if pending is not None:
                yield pending


class MemoryStores:
    """One ``MemoryStore`` per partition, made on first use."""

    def __init__(self) -> None:
        self.stores: dict[int, MemoryStore] = {}

    def partition(self, p: int) -> MemoryStore:
        store = self.stores.get(p)
        if store is None:
            store = self.stores[p] = MemoryStore()
        return store
