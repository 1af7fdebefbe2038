"""``forewarn deliver``'s rate and added latency, for ``make bench`` (or alone:
``.venv/bin/python bench/delivery.py``); also written to bench/results/delivery.json.

N actions are published to a fresh actions topic before one deliverer starts (in this
process, in a thread); a local receiver (aiohttp on 127.0.0.1, answering 200 at once) counts
them. Deliveries per second are over the receiver's first to last request. The added latency
is the deliverer's own, measured in process from the moment it read an action to the moment
its request was answered: the broker hop is excluded, as elsewhere in the benchmarks, and so
is the turn's Kafka transaction (the outcome is committed after the request). Set
FOREWARN_BENCH_BOOTSTRAP to use another Kafka.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import sys
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta

from aiohttp import web
from confluent_kafka import Producer

# bench/run.py, beside this script: the same broker (or FOREWARN_BENCH_BOOTSTRAP's Kafka)
from run import RESULTS, broker

from forewarn.delivery.config import DeliveryConfig, parse_destinations
from forewarn.models.contracts import OutreachAction, Reason, Scores
from forewarn.pipeline.codecs import encode
from forewarn.streams.broker import free_port
from forewarn.streams.delivery.worker import DeliveryWorker
from forewarn.streams.settings import Settings, TopicNames, kafka_config
from forewarn.streams.topics import create_topics

SECRET = "whsec_" + "YmVuY2gtc2VjcmV0LWJlbmNoLXNlY3JldA=="


class Receiver:
    """Counts requests; answers 200 at once."""

    def __init__(self) -> None:
        self.port = free_port()
        self.times: list[float] = []
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)

        async def hook(request: web.Request) -> web.Response:
            await request.read()
            self.times.append(time.perf_counter())
            return web.Response(text="ok")

        app = web.Application()
        app.router.add_post("/hook", hook)
        self.runner = web.AppRunner(app, access_log=None)
        self.loop.run_until_complete(self.runner.setup())
        site = web.TCPSite(self.runner, "127.0.0.1", self.port)
        self.loop.run_until_complete(site.start())
        self.ready.set()
        self.loop.run_forever()

    def start(self) -> Receiver:
        self.thread.start()
        self.ready.wait(10)
        return self

    def stop(self) -> None:
        async def down() -> None:
            await self.runner.cleanup()
            self.loop.stop()

        asyncio.run_coroutine_threadsafe(down(), self.loop)
        self.thread.join(10)


def actions(n: int) -> list[OutreachAction]:
    now = datetime.now(UTC)
    return [
        OutreachAction(
            action_id=f"bench-{i}",
            customer_id=f"cust-{i % 5000:06d}",
            rule_id="checkout_assist",
            playbook="checkout_assist",
            channel="in_app",
            priority=50,
            template="t",
            reasons=[Reason(signal="checkout_error", contribution=20, detail="checkout errors: 2")],
            scores=Scores(friction=55),
            trigger_event_id=f"e-{i}",
            triggered_at=now,
            decided_at=now,
            expires_at=now + timedelta(hours=6),
            rulebook_version="bench",
            model_version="bench",
        )
        for i in range(n)
    ]


def run(n: int, partitions: int, timeout: float) -> dict[str, float]:
    with broker() as servers:
        tag = uuid.uuid4().hex[:8]
        s = Settings(
            bootstrap_servers=servers,
            topics=TopicNames(partitions=partitions).suffixed(f"bench-{tag}"),
            instance_id=f"bench-{tag}",
            session_timeout_ms=6000,
            batch_timeout_seconds=0.2,
            http_port=0,
            delivery=DeliveryConfig(group_id=f"bench-delivery-{tag}", http_port=0),
        )
        assert all(r.ok for r in create_topics(s))
        producer = Producer(kafka_config(s, "producer"))
        for a in actions(n):
            producer.produce(s.topics.actions, encode(a), a.customer_id.encode())
        assert producer.flush(60) == 0
        receiver = Receiver().start()
        book = parse_destinations(
            json.dumps(
                {
                    "destinations": [
                        {
                            "name": "bench",
                            "url": f"http://127.0.0.1:{receiver.port}/hook",
                            "secret_env": "S",
                        }
                    ]
                }
            ),
            environ={"S": SECRET},
        )
        worker = DeliveryWorker(s, book)
        worker.added_latency = []
        thread = threading.Thread(target=worker.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + timeout
        try:
            while len(receiver.times) < n and time.monotonic() < deadline:
                time.sleep(0.2)
        finally:
            worker.stop()
            thread.join(30)
            receiver.stop()
        got = len(receiver.times)
        if got < n:
            raise SystemExit(f"only {got} of {n} deliveries within {timeout} s")
        span = receiver.times[-1] - receiver.times[0]
        lat = sorted(worker.added_latency)
        q = statistics.quantiles(lat, n=100)
        return {
            "actions": n,
            "deliveries_per_s": round(n / span, 1),
            "added_latency_p50_ms": round(q[49] * 1000, 2),
            "added_latency_p99_ms": round(q[98] * 1000, 2),
        }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--actions", type=int, default=5000, help="actions to deliver")
    ap.add_argument("--partitions", type=int, default=6, help="actions topic partitions")
    ap.add_argument("--timeout", type=float, default=300, help="give up after S seconds")
    args = ap.parse_args(argv)
    out = run(args.actions, args.partitions, args.timeout)
    # beside latest.json, for `make readme-numbers` (bench/readme_numbers.py)
    RESULTS.mkdir(exist_ok=True)
    where = {
        "at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "broker": "FOREWARN_BENCH_BOOTSTRAP"
        if os.environ.get("FOREWARN_BENCH_BOOTSTRAP")
        else "embedded Tansu (memory)",
    }
    (RESULTS / "delivery.json").write_text(json.dumps({**out, **where}, indent=2) + "\n")
    print(
        f"forewarn deliver, one deliverer, {out['actions']:,} actions to a local receiver: "
        f"{out['deliveries_per_s']:,.0f} deliveries/s; added latency (read to answered, "
        f"broker hop excluded) p50 {out['added_latency_p50_ms']:.1f} ms, "
        f"p99 {out['added_latency_p99_ms']:.1f} ms"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
