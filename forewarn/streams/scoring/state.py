"""Where a worker keeps its partitions' customer state, and how it gets it back.

Each partition the worker owns has a store: in memory by default, or a RocksDB database per
partition under ``FOREWARN_STATE_DIR``. Every committed batch also writes the changed
customers to the compacted changelog topic, so the state of a partition is always
recoverable from Kafka. A store remembers its **checkpoint**: the changelog offset up to
which it already holds what the changelog says. Restoring a partition reads the changelog
from that checkpoint (from the beginning when there is none) to its end.

The store only ever holds committed state: the engine's writes of a batch are the batch's
own until its transaction commits (RocksDB keeps them pending; the in-memory store cannot
take them back, so after an abort its partition is dropped and restored from Kafka).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition
from rocksdict import Options, Rdict, WriteBatch

from forewarn.models.ports import MemoryStateStore
from forewarn.models.state import CustomerState
from forewarn.models.state_codec import StateDecodeError, decode_state

log = logging.getLogger("forewarn.state")

#: header on every changelog record: the partition's stream time after the batch
STREAM_TIME_HEADER = "forewarn-stream-time"

#: customer id -> encoded state, or None for a deletion (what a batch commits)
Encoded = dict[str, bytes | None]


class PartitionStore(MemoryStateStore):
    """One partition's customers in memory."""

    def __init__(self) -> None:
        super().__init__()
        #: the changelog offset this store is complete up to (None: never restored)
        self.checkpoint: int | None = None
        self.stream_time = -math.inf
        #: customers whose changelog record could not be read, with the reason
        self.unreadable: dict[str, str] = {}

    def get(self, customer_id: str) -> CustomerState | None:
        if customer_id in self.unreadable:
            # Raised to the engine, which dead-letters the customer's records with it: an
            # operator sees it and can delete the record (a tombstone) to start afresh.
            raise StateDecodeError(f"{customer_id}: {self.unreadable[customer_id]}")
        return super().get(customer_id)

    def put(self, state: CustomerState) -> None:
        self.unreadable.pop(state.customer_id, None)
        super().put(state)

    def delete(self, customer_id: str) -> None:
        self.unreadable.pop(customer_id, None)
        super().delete(customer_id)

    def apply(self, encoded: Encoded) -> int:
        """Take restored changelog records; the number that could not be read."""
        bad = 0
        for cid, value in encoded.items():
            if value is None:
                self.delete(cid)
                continue
            try:
                self.put(decode_state(value))
            except StateDecodeError as e:
                super().delete(cid)
                self.unreadable[cid] = str(e)
                bad += 1
        return bad

    def commit(self, encoded: Encoded, checkpoint: int | None, stream_time: float) -> None:
        self.checkpoint = checkpoint if checkpoint is not None else self.checkpoint
        self.stream_time = max(self.stream_time, stream_time)

    def discard(self) -> bool:
        """Forget uncommitted writes; False when that is impossible (restore from scratch)."""
        return False

    def close(self) -> None:
        """Nothing to release in memory."""


_CUSTOMER = b"c"
_CHECKPOINT = b"m:checkpoint"
_STREAM_TIME = b"m:stream-time"


class RocksPartitionStore:
    """One partition's customers in a RocksDB database; survives restarts (checkpoint)."""

    def __init__(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.db = Rdict(str(path), Options(raw_mode=True))
        self._pending: dict[str, CustomerState | None] = {}
        cp = self.db.get(_CHECKPOINT)
        self.checkpoint: int | None = None if cp is None else int(cp)
        st = self.db.get(_STREAM_TIME)
        self.stream_time = -math.inf if st is None else float(st)

    def get(self, customer_id: str) -> CustomerState | None:
        if customer_id in self._pending:
            return self._pending[customer_id]
        value = self.db.get(_CUSTOMER + customer_id.encode())
        return None if value is None else decode_state(value)

    def put(self, state: CustomerState) -> None:
        self._pending[state.customer_id] = state

    def delete(self, customer_id: str) -> None:
        self._pending[customer_id] = None

    def _customers(self) -> Iterator[tuple[str, bytes]]:
        for key, value in self.db.items(from_key=_CUSTOMER):
            k = cast(bytes, key)
            if k[:1] != _CUSTOMER:
                break
            yield k[1:].decode(), cast(bytes, value)

    def __len__(self) -> int:
        return sum(1 for _ in self._customers())

    def estimated_customers(self) -> int:
        """RocksDB's own estimate (cheap, unlike counting): for the metrics gauge."""
        keys = self.db.property_int_value("rocksdb.estimate-num-keys") or 0
        return max(0, keys - 2)  # the checkpoint and stream-time entries

    def __iter__(self) -> Iterator[CustomerState]:
        seen = set()
        for cid, value in self._customers():
            seen.add(cid)
            state = self._pending.get(cid, decode_state(value))
            if state is not None:
                yield state
        for cid, pending in list(self._pending.items()):
            if cid not in seen and pending is not None:
                yield pending

    def apply(self, encoded: Encoded) -> int:
        """Take restored changelog records as they are (read, and refused, on ``get``)."""
        self._write(encoded, None, None)
        return 0

    def commit(self, encoded: Encoded, checkpoint: int | None, stream_time: float) -> None:
        self._write(encoded, checkpoint, stream_time)
        self._pending.clear()

    def _write(self, encoded: Encoded, checkpoint: int | None, stream_time: float | None) -> None:
        # One atomic write: the states and the checkpoint they bring the store up to.
        wb = WriteBatch(raw_mode=True)
        for cid, value in encoded.items():
            if value is None:
                wb.delete(_CUSTOMER + cid.encode())
            else:
                wb.put(_CUSTOMER + cid.encode(), value)
        if checkpoint is not None:
            self.checkpoint = checkpoint
            wb.put(_CHECKPOINT, str(checkpoint).encode())
        if stream_time is not None and stream_time > self.stream_time:
            self.stream_time = stream_time
            wb.put(_STREAM_TIME, repr(stream_time).encode())
        self.db.write(wb)

    def discard(self) -> bool:
        self._pending.clear()
        return True

    def close(self) -> None:
        self.db.close()


Store = PartitionStore | RocksPartitionStore


class WorkerStores:
    """The stores of the partitions a worker owns (the engine's ``StateStores``)."""

    def __init__(self, state_dir: Path | None, changelog: str) -> None:
        self.state_dir = state_dir
        self.changelog = changelog
        self.stores: dict[int, Store] = {}

    def partition(self, p: int) -> Store:
        store = self.stores.get(p)
        if store is None:
            store = self.stores[p] = self._open(p)
        return store

    def _open(self, p: int) -> Store:
        if self.state_dir is None:
            return PartitionStore()
        return RocksPartitionStore(self.state_dir / f"{self.changelog}-{p}")

    def drop(self, p: int) -> None:
        """Forget a partition's store in this process (RocksDB files stay for next time)."""
        store = self.stores.pop(p, None)
        if store is not None:
            store.close()

    def keep_only(self, partitions: set[int]) -> None:
        for p in [p for p in self.stores if p not in partitions]:
            self.drop(p)

    def customers(self) -> int:
        """Customers held (RocksDB: its estimate), for the ``customers_tracked`` gauge."""
        return sum(
            len(s) if isinstance(s, PartitionStore) else s.estimated_customers()
            for s in self.stores.values()
        )

    def close(self) -> None:
        for p in list(self.stores):
            self.drop(p)


@dataclass(frozen=True, slots=True)
class RestoreResult:
    partition: int
    records: int
    customers: int
    seconds: float
    from_checkpoint: int | None
    #: records whose state could not be read (their customers' events are dead-lettered)
    unreadable: int = 0


def restore_partition(
    consumer: Consumer,
    changelog: str,
    p: int,
    store: Store,
    *,
    progress: Callable[[int, int], None] | None = None,
    chunk: int = 1000,
) -> RestoreResult:
    """Bring ``store`` up to the end of changelog partition ``p``.

    ``consumer`` is a plain (never-committing) consumer with ``enable.partition.eof`` on and
    ``read_committed`` isolation; ``progress(read, remaining)`` is called after each chunk.
    """
    started = time.perf_counter()
    start = store.checkpoint
    tp = TopicPartition(changelog, p, OFFSET_BEGINNING if start is None else start)
    low, high = consumer.get_watermark_offsets(tp, timeout=10)
    position = low if start is None else max(start, low)
    consumer.assign([tp])
    records = 0
    end: int | None = None
    stream_time = store.stream_time
    # Only the last record of each customer matters: collect them, decode each once.
    latest: Encoded = {}
    try:
        while end is None:
            for m in consumer.consume(chunk, 0.5):
                err = m.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        end = m.offset()
                        continue
                    raise RuntimeError(f"restoring {changelog}[{p}]: {err}")
                key = m.key()
                if key is None:
                    continue
                cid = key.decode() if isinstance(key, bytes) else key
                value = m.value()
                latest[cid] = value if isinstance(value, bytes) or value is None else value.encode()
                headers = m.headers() or []
                for name, v in headers.items() if isinstance(headers, dict) else headers:
                    if name == STREAM_TIME_HEADER and v is not None:
                        stream_time = max(stream_time, float(v))
                position = (m.offset() or 0) + 1
                records += 1
            if progress is not None:
                progress(records, max(0, high - position))
        unreadable = store.apply(latest)
        store.commit({}, end if end is not None else position, stream_time)
    finally:
        consumer.unassign()
    seconds = time.perf_counter() - started
    return RestoreResult(p, records, len(latest), seconds, start, unreadable)
