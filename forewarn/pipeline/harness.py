"""The engine in memory, for scenarios, replays and rule tests: no broker, a clock you move.

Feed profiles and events, advance the clock, read what the worker would have published.
Records are encoded exactly as upstream sends them and numbered as one partition holds them,
so a scenario runs the same code path as the worker.

>>> from datetime import UTC, datetime, timedelta
>>> from forewarn.models.contracts import ALL_CONSENT, JourneyEvent
>>> t0 = datetime(2026, 3, 2, 12, tzinfo=UTC)
>>> h = Harness(start=t0)
>>> _ = h.profile("ann", consent=ALL_CONSENT)
>>> leaving = JourneyEvent(event_id="e1", customer_id="ann", type="subscription_cancel_started",
...                        occurred_at=t0)
>>> [(a.rule_id, a.channel.value) for a in h.feed(leaving).actions]
[('retention_offer', 'email')]
>>> h.advance(60).isoformat(), len(h.decisions)
('2026-03-02T12:01:00+00:00', 1)
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from forewarn.models.contracts import (
    CustomerProfile,
    DeadLetter,
    Decision,
    JourneyEvent,
    OutreachAction,
)
from forewarn.models.friction import FrictionConfig
from forewarn.models.risk import RiskModel
from forewarn.models.state import CustomerState
from forewarn.pipeline.clocks import ManualClock, SystemClock
from forewarn.pipeline.codecs import DecodeSettings, RawRecord, encode
from forewarn.pipeline.engine import ScoringEngine
from forewarn.pipeline.results import BatchResult, ScoredEvent
from forewarn.pipeline.stores import MemoryStores
from forewarn.rules.rulebook import Rulebook

EVENTS, PROFILES = "journey-events", "customer-profiles"


class Harness:
    """A ``ScoringEngine`` over in-memory stores, one partition, and a manual clock.

    Everything published is also collected: ``actions``, ``decisions``, ``dead_letters``
    and, with ``taps``, ``scored``.
    """

    def __init__(
        self,
        *,
        rulebook: Rulebook | None = None,
        churn: RiskModel | None = None,
        friction: FrictionConfig | None = None,
        decode: DecodeSettings | None = None,
        start: datetime | None = None,
        clock: ManualClock | None = None,
        taps: bool = False,
    ) -> None:
        self.clock = clock or ManualClock(start or SystemClock().now())
        self.stores = MemoryStores()
        self.engine = ScoringEngine(
            rulebook=rulebook,
            churn=churn,
            friction=friction,
            decode=decode,
            stores=self.stores,
            clock=self.clock,
            taps=taps,
        )
        self.actions: list[OutreachAction] = []
        self.decisions: list[Decision] = []
        self.dead_letters: list[DeadLetter] = []
        self.scored: list[ScoredEvent] = []
        self._event_offset = 0
        self._profile_offset = 0

    # -- time --

    def advance(self, seconds: float) -> datetime:
        """Move the clock on; the new time."""
        return self.clock.advance(seconds)

    def at(self, when: datetime) -> None:
        """Set the clock (replays stand it at each batch's latest event)."""
        self.clock.set(when)

    # -- input --

    def profile(self, customer_id: str, **fields: object) -> BatchResult:
        """Publish one customer's profile (``consent``, ``timezone``, ...)."""
        return self.profiles([CustomerProfile(customer_id=customer_id, **fields)])

    def profiles(self, profiles: Iterable[CustomerProfile]) -> BatchResult:
        return self.records(profiles=[self._profile_record(p) for p in profiles])

    def feed(self, *events: JourneyEvent) -> BatchResult:
        """Publish events, in this order, as one batch."""
        return self.records(events=[self.event_record(encode(e), e.customer_id) for e in events])

    def event_record(self, value: bytes, key: str | None) -> RawRecord:
        """The next journey-events record of the partition (for hand-made bytes)."""
        rec = RawRecord(EVENTS, 0, self._event_offset, None if key is None else key.encode(), value)
        self._event_offset += 1
        return rec

    def _profile_record(self, p: CustomerProfile) -> RawRecord:
        rec = RawRecord(PROFILES, 0, self._profile_offset, p.customer_id.encode(), encode(p))
        self._profile_offset += 1
        return rec

    def records(
        self, events: list[RawRecord] | None = None, profiles: list[RawRecord] | None = None
    ) -> BatchResult:
        """One batch of raw records through the engine; what it published is collected."""
        result = self.engine.process(events or [], profiles or [])
        for store in self.stores.stores.values():  # as the worker does once it is published
            store.commit()
        self.actions += result.actions
        self.decisions += result.decisions
        self.dead_letters += result.dead_letters
        if result.scored is not None:
            self.scored += result.scored
        return result

    # -- what the engine knows --

    def state(self, customer_id: str) -> CustomerState | None:
        """The customer's state now (a copy)."""
        return self.stores.partition(0).get(customer_id)
