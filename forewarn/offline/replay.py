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
    Milestone,
    OutreachAction,
)
from forewarn.models.friction import FrictionConfig
from forewarn.models.releases import ModelRelease
from forewarn.models.risk import RiskModel
from forewarn.offline.response import Responder
from forewarn.pipeline.codecs import encode
from forewarn.pipeline.harness import Harness
from forewarn.pipeline.learner import ContactLearner
from forewarn.pipeline.learning_rows import FEATURE_ROW_SHARE
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
    #: with a learner: every fit it made, accepted or refused, in order
    releases: list[ModelRelease] = field(default_factory=list)
    #: support contacts, cancellations and purchases, as the milestones topic would hold them
    milestones: list[Milestone] = field(default_factory=list)
    #: with a responder: the events it prevented (the customers were reached first)
    prevented: int = 0


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
    contact: RiskModel | None = None,
    releases: Sequence[ModelRelease] = (),
    learner: ContactLearner | None = None,
    sample_share: float = FEATURE_ROW_SHARE,
    responder: Responder | None = None,
) -> Replay:
    """What the scoring worker would have published for this history (events in time order).

    ``contact``: a contact-risk model for every event; ``releases``: stream-learned versions,
    each applied from the time it names (a model history: the same decisions as the stream
    that used them); ``learner``: learn in the replay as ``forewarn learn`` would beside the
    worker, from a ``sample_share`` of the moments without trouble. ``responder``: the
    customers respond to the actions (``offline/response.py``): each batch's actions reach
    them before the next batch, and the support contacts and cancellations they prevent
    never happen (keep batches small: an event in the same batch as its action is not
    prevented).
    """
    if not events:
        return Replay(0)
    h = Harness(
        rulebook=rulebook, churn=churn, friction=friction, start=events[0].occurred_at, taps=True
    )
    engine = h.engine
    engine.use(contact=contact)
    for r in releases:
        if r.verdict.accepted:
            engine.serve(r.risk_model(), r.serves_from.timestamp())
    if learner is not None:
        engine.feature_rows = sample_share
    h.profiles(permissive_profiles(events) if profiles is None else profiles)
    made: list[ModelRelease] = []
    milestones: list[Milestone] = []
    prevented = 0
    for start in range(0, len(events), batch_size):
        chunk = events[start : start + batch_size]
        h.at(max(e.occurred_at for e in chunk))
        if responder is not None:
            kept = [e for e in chunk if responder.keeps(e)]
            prevented += len(chunk) - len(kept)
            chunk = kept
        result = h.feed(*chunk)
        milestones += result.milestones.records
        if responder is not None:
            for a in result.actions:
                responder.treat(a)
        if learner is None:
            continue
        for row in result.feature_rows:
            learner.row(row)
        for m in result.milestones:
            learner.milestone(m)
        for r in learner.advance(max(e.occurred_at for e in chunk).timestamp()):
            made.append(r)
            if r.verdict.accepted:
                engine.serve(r.risk_model(), r.serves_from.timestamp())
    return Replay(
        len(events), h.actions, h.decisions, len(h.dead_letters), h.scored, profiles is None,
        made, milestones, prevented,
    )  # fmt: skip


def write_replay(out: Replay, directory: Path) -> tuple[Path, Path, Path | None]:
    """``actions.jsonl``, ``decisions.jsonl`` and, with a learner, ``models.jsonl`` (every
    fit, as the models topic would hold them) in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    actions, decisions = directory / "actions.jsonl", directory / "decisions.jsonl"
    with actions.open("wb") as f:
        for a in out.actions:
            f.write(encode(a) + b"\n")
    with decisions.open("wb") as f:
        for d in out.decisions:
            f.write(encode(d) + b"\n")
    models = None
    if out.releases:
        models = directory / "models.jsonl"
        models.write_text("".join(r.model_dump_json() + "\n" for r in out.releases))
    return actions, decisions, models
