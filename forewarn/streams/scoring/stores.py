"""Where a worker keeps its partitions' customer state, and how it gets it back.

Each partition the worker owns has a store: in memory by default, or a RocksDB database per
partition under ``FOREWARN_STATE_DIR``. Every committed batch also writes the changed
customers to the compacted changelog topic, so the state of a partition is always
recoverable from Kafka. A store remembers its **checkpoint**: the changelog offset up to
which it already holds what the changelog says. Restoring a partition reads the changelog
from that checkpoint (from the beginning when there is none) to its end.

The store only ever holds committed state: the engine's writes of a batch wait in a pending
layer until its transaction commits, and an aborted batch's writes are discarded, in memory
as in RocksDB. Nothing is read back from Kafka to undo a batch.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, KafkaError, TopicPartition
from rocksdict import Options, Rdict, WriteBatch

from forewarn.models.state import CustomerState
from forewarn.models.state_codec import StateDecodeError, decode_state
from forewarn.pipeline.ports import Encoded, is_partition_record
from forewarn.pipeline.stores import MemoryStore, PendingWrites
from forewarn.streams.scoring.outputs import STREAM_TIME_HEADER

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

    def commit(self, encoded: Encoded, checkpoint: int | None) -> None:
        """``encoded`` holds the transaction's customers and partition records as bytes."""
        self._write(encoded, checkpoint, self._pending_stream_time)
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


@dataclass(frozen=True, slots=True)
class RestoreResult:
    partition: int
    records: int
    customers: int
    seconds: float
    from_checkpoint: int | None


#: how long one restore read waits for more records: short, since the end of the partition
#: comes as an event of its own and a partly filled read would otherwise wait it out
_RESTORE_READ_SECONDS = 0.05
#: empty restore reads that must agree before a changelog counts as behind (1.5 s in all)
_BEHIND_ROUNDS = 30


class ChangelogBehind(Exception):
    """The changelog ends before the store's checkpoint: the topic was recreated (a broker
    that came back empty, a topic deleted by hand). The store's contents are not what the
    changelog holds any more, so the store starts afresh from the changelog."""


class RestoreStalled(RuntimeError):
    """A restore read nothing and saw no end for too long (the broker is unreachable)."""


def restore_partition(
    consumer: Consumer,
    changelog: str,
    p: int,
    store: Store,
    *,
    progress: Callable[[int, int], None] | None = None,
    chunk: int = 1000,
    stopping: Callable[[], bool] = lambda: False,
    stall_seconds: float = 30.0,
) -> RestoreResult | None:
    """Bring ``store`` up to the end of changelog partition ``p``; None when ``stopping()``.

    ``consumer`` is a plain (never-committing) consumer with ``enable.partition.eof`` on and
    ``read_committed`` isolation; ``progress(read, remaining)`` is called after each chunk.
    A store whose checkpoint lies beyond the changelog's end is cleared and restored from the
    beginning; ``RestoreStalled`` when nothing arrives for ``stall_seconds``.
    """
    started = time.perf_counter()
    start = store.checkpoint
    try:
        read = _read_changelog(consumer, changelog, p, store, progress, chunk, stopping,
                               stall_seconds)  # fmt: skip
    except ChangelogBehind as behind:
        log.warning("partition %d: %s; its state starts afresh from the changelog", p, behind)
        store.clear()
        start = None
        read = _read_changelog(consumer, changelog, p, store, progress, chunk, stopping,
                               stall_seconds)  # fmt: skip
    if read is None:
        return None
    records, latest, end, stream_time = read
    store.apply(latest)
    store.advance(stream_time)
    store.commit({}, end)
    seconds = time.perf_counter() - started
    customers = sum(not is_partition_record(k) for k in latest)
    return RestoreResult(p, records, customers, seconds, start)


def _read_changelog(
    consumer: Consumer,
    changelog: str,
    p: int,
    store: Store,
    progress: Callable[[int, int], None] | None,
    chunk: int,
    stopping: Callable[[], bool],
    stall_seconds: float,
) -> tuple[int, Encoded, int, float] | None:
    """(records read, each customer's last record, end offset, stream time) or None."""
    start = store.checkpoint
    tp = TopicPartition(changelog, p, OFFSET_BEGINNING if start is None else start)
    low, high = consumer.get_watermark_offsets(tp, timeout=10)
    if low == high and (start is None or start == high):
        # An empty partition (on the embedded broker too, whose reported end may fall short
        # of the last batch but never equals the start of a partition that holds one) with
        # the store's checkpoint at its end: nothing to read, so no fetch to wait for.
        return 0, {}, high, store.stream_time
    position = low if start is None else max(start, low)
    consumer.assign([tp])
    records = 0
    end: int | None = None
    stream_time = store.stream_time
    # Only the last record of each customer matters: collect them, decode each once.
    latest: Encoded = {}
    last_news = time.monotonic()
    behind_rounds = 0
    try:
        while end is None:
            if stopping():
                return None
            msgs = consumer.consume(chunk, _RESTORE_READ_SECONDS)
            for m in msgs:
                err = m.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        end = m.offset()
                        if start is not None and end is not None and end < start:
                            raise ChangelogBehind(f"the changelog ends at {end}, before the "
                                                  f"store's checkpoint {start}")  # fmt: skip
                        continue
                    raise RuntimeError(f"restoring {changelog}[{p}]: {err}")
                offset = m.offset() or 0
                if start is not None and offset < start:
                    # A real Kafka resets a fetch beyond the end to the beginning.
                    raise ChangelogBehind(f"the changelog restarts at offset {offset}, "
                                          f"before the store's checkpoint {start}")  # fmt: skip
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
                position = offset + 1
                records += 1
            if msgs:
                last_news = time.monotonic()
                behind_rounds = 0
            else:
                # The embedded broker answers a fetch beyond the end with nothing at all,
                # but the fetch's high watermark tells. (Right after an assignment the cached
                # watermark may still be an earlier fetch's: trust it after a few rounds.)
                _, fetched_high = consumer.get_watermark_offsets(tp, cached=True)
                behind = start is not None and 0 <= fetched_high < position
                behind_rounds = behind_rounds + 1 if behind else 0
                if behind_rounds >= _BEHIND_ROUNDS:
                    raise ChangelogBehind(f"the changelog ends at {fetched_high}, before the "
                                          f"store's checkpoint {start}")  # fmt: skip
                if time.monotonic() - last_news > stall_seconds:
                    raise RestoreStalled(
                        f"restoring {changelog}[{p}]: nothing read for {stall_seconds:g} s"
                    )
            if progress is not None:
                progress(records, max(0, high - position))
    finally:
        consumer.unassign()
    return records, latest, end, stream_time


def partition_ends(
    consumer: Consumer,
    topic: str,
    partitions: Iterable[int],
    *,
    stopping: Callable[[], bool] = lambda: False,
    stall_seconds: float = 30.0,
) -> dict[int, int] | None:
    """Where each of ``topic``'s ``partitions`` ends, as a fetch reports it; None when
    ``stopping()``.

    Reads from the end the broker reports when asked (which the embedded broker gives as the
    base offset of the last record batch, docs/decisions.md §16) to librdkafka's
    end-of-partition event, which comes from the fetch and is right everywhere. All the
    partitions are read together: a worker given several is ready after one wait, not one
    per partition. ``consumer`` is the restore consumer (``enable.partition.eof`` on).
    """
    wanted = set(partitions)
    ends: dict[int, int] = {}
    consumer.assign([TopicPartition(topic, p, OFFSET_END) for p in sorted(wanted)])
    last_news = time.monotonic()
    try:
        while not stopping():
            if wanted <= ends.keys():
                return ends
            msgs = consumer.consume(1000, 0.1)
            for m in msgs:
                err = m.error()
                if err is None:
                    continue
                if err.code() == KafkaError._PARTITION_EOF:
                    ends.setdefault(m.partition() or 0, m.offset() or 0)
                    continue
                raise RuntimeError(f"reading to the end of {topic}[{m.partition()}]: {err}")
            if msgs:
                last_news = time.monotonic()
            elif time.monotonic() - last_news > stall_seconds:
                missing = sorted(wanted - ends.keys())
                raise RestoreStalled(f"{topic}{missing}: no end seen for {stall_seconds:g} s")
    finally:
        consumer.unassign()
    return None
