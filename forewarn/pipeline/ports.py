"""The small ports where the Kafka shell meets the pure core, with in-memory implementations.

The scoring engine sees only these: a clock, a state store and (in the worker) an output
sink. Tests use the in-memory ones; the worker plugs in Kafka-backed ones.

>>> from datetime import UTC, datetime
>>> clock = ManualClock(datetime(2026, 1, 1, tzinfo=UTC))
>>> clock.advance(90).isoformat()
'2026-01-01T00:01:30+00:00'
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Protocol

from forewarn.models.state import CustomerState


class Clock(Protocol):
    def now(self) -> datetime:
        """The current time, timezone-aware."""
        ...


class SystemClock:
    def now(self) -> datetime:
        return datetime.now(UTC)


class ManualClock:
    """A clock that moves only when told to: scenario tests advance it explicitly."""

    def __init__(self, start: datetime) -> None:
        if start.tzinfo is None:
            raise ValueError("ManualClock needs a timezone-aware start")
        self._now = start

    def now(self) -> datetime:
        return self._now

    def advance(self, seconds: float) -> datetime:
        self._now += timedelta(seconds=seconds)
        return self._now

    def set(self, at: datetime) -> None:
        self._now = at


class StateStore(Protocol):
    """The per-customer state of one partition.

    ``get`` hands out a private copy: changes reach the store only through ``put``, which
    the engine calls once a batch has succeeded. So a batch that raises halfway leaves the
    store exactly as it was, and the worker can retry parts of it without reading Kafka.
    """

    def get(self, customer_id: str) -> CustomerState | None: ...

    def put(self, state: CustomerState) -> None: ...

    def delete(self, customer_id: str) -> None: ...

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[CustomerState]: ...


class StateStores(Protocol):
    """The state stores of the partitions this worker owns, one per partition."""

    def partition(self, p: int) -> StateStore: ...


class MemoryStateStore:
    def __init__(self) -> None:
        self._states: dict[str, CustomerState] = {}

    def get(self, customer_id: str) -> CustomerState | None:
        state = self._states.get(customer_id)
        return None if state is None else state.copy()

    def put(self, state: CustomerState) -> None:
        self._states[state.customer_id] = state

    def delete(self, customer_id: str) -> None:
        self._states.pop(customer_id, None)

    def __len__(self) -> int:
        return len(self._states)

    def __iter__(self) -> Iterator[CustomerState]:
        return iter(list(self._states.values()))


class MemoryStateStores:
    """One ``MemoryStateStore`` per partition, made on first use."""

    def __init__(self) -> None:
        self.stores: dict[int, MemoryStateStore] = {}

    def partition(self, p: int) -> MemoryStateStore:
        store = self.stores.get(p)
        if store is None:
            store = self.stores[p] = MemoryStateStore()
        return store
