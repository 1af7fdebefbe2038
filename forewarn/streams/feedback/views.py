"""The feedback plane's HTTP API (faust web views, JSON).

* ``GET /customers/{id}``: the customer's recent decisions (emitted and suppressed, with
  reasons, action and scores), the outcomes reported for its actions, and its milestones;
  answered by the worker that owns the customer (faust routes the request there);
* ``GET /experiments`` and ``GET /experiments/{rule_id}``: the experiment report, over
  every feedback worker (each adds its own tally, ``/experiments/tally``);
* ``GET /healthz``, ``/readyz``, ``/metrics``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime
from typing import TYPE_CHECKING, Any

import aiohttp
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from forewarn.experiments.ledger import CustomerLedger
from forewarn.experiments.report import ExperimentTally, experiment_report, tally

if TYPE_CHECKING:
    from forewarn.streams.feedback.app import FeedbackApp

log = logging.getLogger(__name__)

PEER_TIMEOUT_SECONDS = 5.0
#: the experiment gauges on /metrics are recomputed at most this often
EXPERIMENT_GAUGES_SECONDS = 60.0


def customer_view(ledger: CustomerLedger, watermark: datetime | None) -> dict[str, Any]:
    """What ``GET /customers/{id}`` and ``forewarn why`` show for one customer."""
    decisions = []
    for d in reversed(ledger.recent):
        mark = ledger.actions.get(d.action.action_id)
        decisions.append(
            {
                "decision_id": d.decision_id,
                "rule_id": d.rule_id,
                "status": d.status.value,
                "suppressed_by": d.suppressed_by.value if d.suppressed_by else None,
                "detail": d.detail,
                "arm": d.arm,
                "triggered_at": d.action.triggered_at.isoformat(),
                "scores": d.action.scores.model_dump(mode="json"),
                "reasons": [r.model_dump(mode="json") for r in d.action.reasons],
                "action": d.action.model_dump(mode="json"),
                "outcomes": {k.value: t.isoformat() for k, t in mark.outcomes.items()}
                if mark
                else {},
            }
        )
    return {
        "customer_id": ledger.customer_id,
        "as_of": watermark.isoformat() if watermark else None,
        "decisions": decisions,
        "milestones": [m.model_dump(mode="json") for m in ledger.milestones],
        "open_episodes": [e.model_dump(mode="json") for e in ledger.episodes],
    }


async def _peer_tallies(plane: FeedbackApp) -> tuple[list[ExperimentTally], list[str]]:
    """The tallies of the other feedback workers that own ledger partitions, and the workers
    that did not answer within ``PEER_TIMEOUT_SECONDS`` (stopped, slow, or rebalancing)."""
    app = plane.app
    me = str(app.conf.canonical_url).rstrip("/")
    try:
        hosts = [str(h).rstrip("/") for h in app.router.table_metadata("ledgers")]
    except Exception:  # no assignment yet: nothing to ask
        return [], []
    peers = [h for h in hosts if h != me]
    if not peers:
        return [], []
    timeout = aiohttp.ClientTimeout(total=PEER_TIMEOUT_SECONDS)
    async with aiohttp.ClientSession(timeout=timeout) as session:

        async def one(url: str) -> ExperimentTally:
            async with session.get(f"{url}/experiments/tally") as response:
                response.raise_for_status()
                return ExperimentTally.model_validate_json(await response.read())

        answers = await asyncio.gather(*(one(p) for p in peers), return_exceptions=True)
    tallies, missing = [], []
    for peer, answer in zip(peers, answers, strict=True):
        if isinstance(answer, ExperimentTally):
            tallies.append(answer)
        else:
            log.warning("feedback worker %s did not give its tally: %r", peer, answer)
            plane.metrics.peer_failures.inc()
            missing.append(peer)
    return tallies, missing


def add_views(plane: FeedbackApp) -> None:
    app = plane.app

    @app.page("/customers/{customer_id}")
    @app.table_route(table=plane.ledgers, match_info="customer_id")
    async def customer(web: Any, request: Any, customer_id: str) -> Any:
        found = plane.ledger_of(customer_id)
        if found is None:
            return web.json({"customer_id": customer_id, "error": "no record of this customer"},
                            status=404)  # fmt: skip
        return web.json(customer_view(*found))

    @app.page("/experiments/tally")
    async def local_tally(web: Any, request: Any) -> Any:
        return web.bytes(
            plane.local_tally().model_dump_json().encode(), content_type="application/json"
        )

    async def whole_report() -> Any:
        t = plane.local_tally()
        others, missing = await _peer_tallies(plane)
        for other in others:
            t.merge(other)
        report = experiment_report(t, plane.holdout_shares)
        report.missing_workers = missing
        return report

    @app.page("/experiments")
    async def experiments(web: Any, request: Any) -> Any:
        report = await whole_report()
        return web.bytes(report.model_dump_json().encode(), content_type="application/json")

    @app.page("/experiments/{rule_id}")
    async def experiment(web: Any, request: Any, rule_id: str) -> Any:
        report = await whole_report()
        for rule in report.rules:
            if rule.rule_id == rule_id:
                one = report.model_copy(update={"rules": [rule]})
                return web.bytes(
                    one.model_dump_json(include={"as_of", "rules", "missing_workers"}).encode(),
                    content_type="application/json",
                )
        return web.json({"rule_id": rule_id, "error": "no assignments for this rule"},
                        status=404)  # fmt: skip

    @app.page("/healthz")
    async def healthz(web: Any, request: Any) -> Any:
        return web.json({"status": "ok"})

    @app.page("/readyz")
    async def readyz(web: Any, request: Any) -> Any:
        recovery: Any = app.tables.recovery  # type: ignore[attr-defined]  # not in its interface
        ready = recovery.completed.is_set() and not app.rebalancing
        return web.json({"ready": ready}, status=200 if ready else 503)

    refreshed = [float("-inf")]

    @app.page("/metrics")
    async def metrics(web: Any, request: Any) -> Any:
        # Reading every ledger takes ~20 µs each and holds the agents up meanwhile: the
        # experiment gauges follow at most once a minute, whatever the scrape interval.
        if time.monotonic() - refreshed[0] >= EXPERIMENT_GAUGES_SECONDS:
            held = list(plane.local_ledgers())
            plane.metrics.refresh(tally(iter(held), plane.windows), len(held))
            # nothing held yet (a worker starting): look again at the next scrape
            refreshed[0] = time.monotonic() if held else float("-inf")
        return web.bytes(
            generate_latest(plane.metrics.registry),
            content_type=CONTENT_TYPE_LATEST.split(";")[0],
        )
