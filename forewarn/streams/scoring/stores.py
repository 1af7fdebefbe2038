"""Where a worker keeps its partitions' customer state (``restore.py`` gets it back).

Each partition the worker owns has a store: in memory by default, or a RocksDB database per
partition under ``FOREWARN_STATE_DIR``. Every committed batch also writes the changed
customers to the compacted changelog topic, so the state of a partition is always
recoverable from Kafka. A store remembers its **checkpoint**: the changelog offset up to
which it already holds what the changelog says.

The store only ever holds committed state: the engine's writes of a batch wait in a pending
layer until its transaction commits, and an aborted batch's writes are discarded, in memory
as in RocksDB. Nothing is read back from Kafka to undo a batch.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import cast

from rocksdict import Options, Rdict, WriteBatch

from forewarn.models.state import CustomerState
from forewarn.models.state_codec import StateDecodeError, decode_state
from forewarn.pipeline.ports import Encoded, is_partition_record
from forewarn.pipeline.stores import MemoryStore, PendingWrites, stored_time

log = logging.getLogger("forewarn.state")

_CUSTOMER = b"c"
_CHECKPOINT = b"m:checkpoint"
_STREAM_TIME = b"m:stream-time"


class RocksStore(PendingWrites):
    """One partition's customers in a RocksDB database; survives restarts (checkpoint).

    The ``StateStore`` contract (``forewarn/pipeline/ports.py``): the transaction's writes
    wait in memory; a commit writes them, the checkpoint and the stream time atomically.
    """

    def __init__(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        self.path = path
        super().__init__()
        self.db = Rdict(str(path), Options(raw_mode=True))
        self._load_marks()
        self._last_seen.unfiled_all()  # read at the first sweep

    def _load_marks(self) -> None:
        cp = self.db.get(_CHECKPOINT)
        self.checkpoint: int | None = None if cp is None else int(cp)
        st = self.db.get(_STREAM_TIME)
        self._stream_time = -math.inf if st is None else float(st)

    def _committed(self, customer_id: str) -> CustomerState | None:
        value = self.db.get(_CUSTOMER + customer_id.encode())
        return None if value is None else decode_state(value)

    def _committed_record(self, key: str) -> bytes | None:
        value = self.db.get(_CUSTOMER + key.encode())
        return None if value is None else cast(bytes, value)

    def _stored_last_seen(self, customer_id: str) -> float | None:
        return stored_time(self.db.get(_CUSTOMER + customer_id.encode()))

    def _stored(self) -> Iterable[tuple[str, float | None]]:
        return [(cid, stored_time(value)) for cid, value in self._customers()]

    def _customers(self) -> Iterator[tuple[str, bytes]]:
        for key, value in self.db.items(from_key=_CUSTOMER):
            k = cast(bytes, key)
            if k[:1] != _CUSTOMER:
                break
            cid = k[1:].decode()
            if not is_partition_record(cid):
                yield cid, cast(bytes, value)

    def __len__(self) -> int:
        return sum(1 for _ in self._customers())

    def approximate_size(self) -> int:
        """RocksDB's own estimate (cheap, unlike counting): for the metrics gauge."""
        keys = self.db.property_int_value("rocksdb.estimate-num-keys") or 0
        return max(0, keys - 2)  # the checkpoint and stream-time entries

    def __iter__(self) -> Iterator[CustomerState]:
        seen = set()
        for cid, value in self._customers():
            seen.add(cid)
            if cid in self._pending:
                state = self._pending[cid]
            else:
                try:
                    state = decode_state(value)
                except StateDecodeError:  # its events are dead-lettered when they come
                    continue
            if state is not None:
                yield state
        for cid, pending in list(self._pending.items()):
            if cid not in seen and pending is not None:
                yield pending

    def apply(self, encoded: Encoded) -> None:
        """Take restored changelog records as they are (read, and refused, on ``get``)."""
        self._write(encoded, None, None)
        for cid, value in encoded.items():
            if value is not None and not is_partition_record(cid):
                self._last_seen.restored(cid)

    def commit(self, encoded: Encoded, checkpoint: int | None) -> None:
        """``encoded`` holds the transaction's customers and partition records as bytes."""
        self._write(encoded, checkpoint, self._pending_stream_time)
        self._file_pending()
        self.discard()  # all of it is written now

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
        if stream_time is not None and stream_time > self._stream_time:
            self._stream_time = stream_time
            wb.put(_STREAM_TIME, repr(stream_time).encode())
        self.db.write(wb)

    def clear(self) -> None:
        self.db.close()
        Rdict.destroy(str(self.path))
        self.db = Rdict(str(self.path), Options(raw_mode=True))
        self.discard()
        self._load_marks()
        self._last_seen.clear()

    def close(self) -> None:
        self.db.close()


Store = MemoryStore | RocksStore


class PartitionStores:
    """The stores of the partitions a worker owns (the engine's ``StateStores``): in memory,
    or RocksDB databases under ``state_dir``."""

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
            return MemoryStore()
        return RocksStore(self.state_dir / f"{self.changelog}-{p}")

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
        return sum(s.approximate_size() for s in self.stores.values())

    def close(self) -> None:
        for p in list(self.stores):
            self.drop(p)
