"""History through the exact streaming code path, without a broker.

``replay`` feeds the events to the engine's in-memory harness in batches (profiles first),
encoded as the worker would receive them, with the clock standing at each batch's latest
event time, and collects what the worker would have published. ``forewarn replay``,
``forewarn evaluate``, ``forewarn rules test`` and ``forewarn rules backtest`` are built on it.

>>> from datetime import UTC, datetime, timedelta
>>> from forewarn.offline.simulator import JourneySimulator
>>> sim = JourneySimulator(30, seed=3, start=datetime(2026, 1, 1, tzinfo=UTC),
...                        span=timedelta(days=2))
>>> out = replay(list(sim.events()), sim.profiles())
>>> out.events > 0 and all(d.action.customer_id for d in out.decisions)
True
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from forewarn.models.contracts import (
    ALL_CONSENT,
    CustomerProfile,
    Decision,
    JourneyEvent,
    OutreachAction,
)
from forewarn.models.friction import FrictionConfig
from forewarn.models.risk import RiskModel
from forewarn.pipeline.codecs import encode
from forewarn.pipeline.harness import Harness
from forewarn.pipeline.results import ScoredEvent
from forewarn.rules.rulebook import Rulebook


@dataclass(slots=True)
class Replay:
    events: int
    actions: list[OutreachAction] = field(default_factory=list)
    decisions: list[Decision] = field(default_factory=list)
    dead_letters: int = 0
    #: every scored event
    scored: list[ScoredEvent] = field(default_factory=list)
    assumed_consent: bool = False


def permissive_profiles(events: Sequence[JourneyEvent]) -> list[CustomerProfile]:
    """Profiles consenting to every channel, for history that comes without profiles."""
    return [
        CustomerProfile(customer_id=c, consent=ALL_CONSENT)
        for c in dict.fromkeys(e.customer_id for e in events)
    ]


def replay(
    events: Sequence[JourneyEvent],
    profiles: Sequence[CustomerProfile] | None = None,
    *,
    rulebook: Rulebook | None = None,
    churn: RiskModel | None = None,
    friction: FrictionConfig | None = None,
    batch_size: int = 500,
) -> Replay:
    """What the scoring worker would have published for this history (events in time order)."""
    if not events:
        return Replay(0)
    h = Harness(
        rulebook=rulebook, churn=churn, friction=friction, start=events[0].occurred_at, taps=True
    )
    h.profiles(permissive_profiles(events) if profiles is None else profiles)
    for start in range(0, len(events), batch_size):
        chunk = events[start : start + batch_size]
        h.at(max(e.occurred_at for e in chunk))
        h.feed(*chunk)
    return Replay(
        len(events), h.actions, h.decisions, len(h.dead_letters), h.scored, profiles is None
    )


def write_replay(out: Replay, directory: Path) -> tuple[Path, Path]:
    """``actions.jsonl`` and ``decisions.jsonl`` in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    actions, decisions = directory / "actions.jsonl", directory / "decisions.jsonl"
    with actions.open("wb") as f:
        for a in out.actions:
            f.write(encode(a) + b"\n")
    with decisions.open("wb") as f:
        for d in out.decisions:
            f.write(encode(d) + b"\n")
    return actions, decisions
