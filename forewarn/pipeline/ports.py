"""The small ports where the Kafka shell meets the pure core: a clock and the state stores.

The scoring engine sees only these. The in-memory implementations live beside them
(``clocks.py``, ``stores.py``); the worker plugs in RocksDB stores
(``forewarn/streams/scoring/stores.py``). Both stores pass the same contract test
(``tests/unit/test_batch_failures.py``).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Protocol

from forewarn.models.state import CustomerState

#: customer id -> encoded state, or None for a deletion (what a batch commits); keys that
#: start with a space are the partition's own records (``StateStore.get_record``)
Encoded = dict[str, bytes | None]


def is_partition_record(key: str) -> bool:
    """Whether a changelog key names a partition record rather than a customer."""
    return key[:1] == " "


class Clock(Protocol):
    def now(self) -> datetime:
        """The current time, timezone-aware."""
        ...


class StateStore(Protocol):
    """One partition's customers, changed in transactions.

    A transaction is what is written since the last ``commit`` or ``discard``: ``put``,
    ``delete`` and ``advance`` wait in it, and ``get`` and ``stream_time`` already see them.
    ``commit`` makes them the store's (the worker calls it once the batch's Kafka transaction
    committed, with the changelog offset the store is then complete up to); ``discard`` drops
    them (an aborted batch). ``get`` hands out a private copy, so a batch that raises halfway
    leaves nothing behind: the engine writes only when a pass succeeds.
    """

    #: the changelog offset this store holds everything before (None: never restored)
    checkpoint: int | None

    @property
    def stream_time(self) -> float:
        """The latest event time applied to the partition (epoch seconds; -inf: none)."""
        ...

    def get(self, customer_id: str) -> CustomerState | None: ...

    def put(self, state: CustomerState) -> None: ...

    def delete(self, customer_id: str) -> None: ...

    def advance(self, stream_time: float) -> None:
        """The partition's stream time moved on (never back)."""
        ...

    def commit(self, encoded: Encoded, checkpoint: int | None) -> None:
        """The transaction's writes become the store's (``encoded``: the same states as
        changelog bytes, for stores that keep bytes)."""
        ...

    def discard(self) -> None: ...

    def seen_before(self, cutoff: float) -> list[CustomerState]:
        """The active customers last seen before ``cutoff`` (stream time), the transaction's
        writes included, in id order; read in proportion to what it finds, not to the store."""
        ...

    def get_record(self, key: str) -> bytes | None:
        """A record of the partition itself (``key`` starts with a space, which no customer
        id can): the volume thresholds. Written, committed and discarded like a customer."""
        ...

    def put_record(self, key: str, value: bytes) -> None: ...

    def apply(self, encoded: Encoded) -> None:
        """Take changelog records as they are (a restore): each customer's is read on first
        ``get``, which raises ``StateDecodeError`` for one that cannot be read."""
        ...

    def clear(self) -> None:
        """Forget everything, checkpoint included (the changelog was recreated)."""
        ...

    def approximate_size(self) -> int:
        """About how many customers the store holds (cheap: for a gauge)."""
        ...

    def close(self) -> None: ...

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[CustomerState]: ...


class StateStores(Protocol):
    """The state stores of the partitions this worker owns, one per partition."""

    def partition(self, p: int) -> StateStore: ...
