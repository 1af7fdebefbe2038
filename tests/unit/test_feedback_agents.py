"""The feedback plane's ledger agent through faust's ``test_context()`` (no broker: records
are put straight into the agent) and its experiments view through aiohttp's test client.
What needs Kafka (the intake, the dead letters, routing, recovery) is proved on the broker
in tests/integration/test_feedback.py."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path
from typing import Any

from aiohttp.test_utils import TestClient, TestServer

from forewarn.models.contracts import Milestone, Outcome, OutcomeKind
from forewarn.pipeline.codecs import RawRecord, encode
from forewarn.streams.feedback.app import FeedbackApp, build_feedback_app, envelope
from forewarn.streams.settings import Settings
from tests.unit.test_experiments import T0, contact, decision, held_out


def plane() -> FeedbackApp:
    built = build_feedback_app(Settings(), store="memory://")
    built.app.finalize()
    built.app.flow_control.resume()
    return built


def wrap(record: object, offset: int) -> bytes:
    kind = {"Decision": b"d", "Milestone": b"m", "Outcome": b"o"}[type(record).__name__]
    return envelope(kind, RawRecord("source", 0, offset, None, encode(record)))


def counted(p: FeedbackApp) -> dict[tuple[str, str], float]:
    return {
        (s.labels["source"], s.labels["result"]): s.value
        for m in p.metrics.registry.collect()
        for s in m.samples
        if s.name == "forewarn_feedback_records_total"
    }


def test_the_ledger_agent_folds_records_once_and_moves_stream_time() -> None:
    p = plane()
    d, h = decision("c1", 0), held_out("c2", 0)
    opened = Outcome(action_id=d.action.action_id, customer_id="c1", kind="opened",
                     at=T0 + timedelta(minutes=5))  # fmt: skip
    # a tool whose clock runs ten days ahead does not move stream time
    clicked = opened.model_copy(update={"kind": OutcomeKind.clicked, "at": T0 + timedelta(days=10)})
    records: list[Any] = [d, d, h, contact("c2", 30), contact("c2", 30), opened, opened, clicked]

    async def run() -> None:
        async with p.app.agents["forewarn.feedback.ledger"].test_context() as agent:
            for i, r in enumerate(records):
                await agent.put(wrap(r, i), key=r.customer_id.encode())

    asyncio.run(run())
    assert counted(p) == {
        ("decisions", "counted"): 2,
        ("decisions", "duplicate"): 1,
        ("milestones", "counted"): 1,
        ("milestones", "duplicate"): 1,
        ("outcomes", "counted"): 2,
        ("outcomes", "duplicate"): 1,
    }
    found = p.ledger_of("c1")
    assert found is not None
    ledger, watermark = found
    assert watermark == T0 + timedelta(minutes=30)  # the latest record's time on partition 0
    assert [e.arm for e in ledger.episodes] == ["treated"]
    assert ledger.actions[d.action.action_id].outcomes.keys() == {"opened", "clicked"}
    report = p.local_tally()
    assert report.pending == {"payment_recovery|email|treated": 1,
                              "payment_recovery|email|holdout": 1}  # fmt: skip


def test_the_experiments_view_reports_the_ledgers() -> None:
    p = plane()
    later = Milestone(event_id="tick", customer_id="c9", type="purchase",
                      occurred_at=T0 + timedelta(days=2))  # fmt: skip

    async def run() -> tuple[int, Any]:
        async with p.app.agents["forewarn.feedback.ledger"].test_context() as agent:
            records: list[Any] = [decision("c1", 0), held_out("c2", 0), contact("c2", 60), later]
            for i, r in enumerate(records):
                await agent.put(wrap(r, i), key=r.customer_id.encode())
        web: Any = p.app.web  # faust's aiohttp driver
        async with TestClient(TestServer(web.web_app)) as client:
            response = await client.get("/experiments/payment_recovery")
            return response.status, await response.json()

    status, body = asyncio.run(run())
    assert status == 200
    (rule,) = body["rules"]
    assert (rule["treated"], rule["holdout"]) == (1, 1)
    assert rule["measures"]["contact"]["holdout_events"] == 1
    assert rule["contact_rate_difference"]["estimate"] == -1.0


def test_with_a_state_dir_the_ledgers_live_in_rocksdb(tmp_path: Path) -> None:
    p = build_feedback_app(Settings(state_dir=tmp_path))
    p.app.finalize()
    p.app.flow_control.resume()

    async def run() -> None:
        async with p.app.agents["forewarn.feedback.ledger"].test_context() as agent:
            await agent.put(wrap(decision("c1", 0), 0), key=b"c1")

    asyncio.run(run())
    assert p.ledger_of("c1") is not None
    assert (tmp_path / "feedback" / "v1" / "tables" / "ledgers-0.db").is_dir()
