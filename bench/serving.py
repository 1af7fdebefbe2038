"""How the scoring worker serves, beyond throughput (issue 14), for ``bench/run.py``:

* **latency**: a paced producer offers 2,000 and 20,000 events/s; for each record, the time
  from its arrival in the worker (the end of the read that returned it) to the commit of its
  batch's outputs. The broker hop is excluded: that is the broker's, not the worker's;
* **ready after assignment**: a fresh worker on topics whose changelogs are empty, from its
  assignment to its first committed batch;
* **kill -9 to first commit**: a worker killed mid-stream and started again under the same
  instance id (what a StatefulSet does), from the kill to the replacement's first commit
  the group can see; with static membership (what the Helm chart and compose set) and
  without (the default, for the embedded broker), both with the production 45 s session;
* **memory**: bytes resident per tracked customer in the memory store, and the changelog
  bytes per customer.
"""

from __future__ import annotations

import gc
import json
import os
import signal
import statistics
import subprocess
import sys
import threading
import time
import tracemalloc
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition

from forewarn.models.contracts import CustomerProfile, JourneyEvent
from forewarn.models.state_codec import encode_state
from forewarn.offline.simulator import JourneySimulator, span_for
from forewarn.pipeline.clocks import ManualClock
from forewarn.pipeline.codecs import RawRecord, encode
from forewarn.pipeline.harness import Harness
from forewarn.streams.metrics import BATCH_PHASES
from forewarn.streams.scoring.worker import ScoringWorker
from forewarn.streams.settings import Settings, kafka_config
from forewarn.streams.simulate import produce_record, publish_backlog
from forewarn.streams.topics import create_topics

Stream = tuple[list[CustomerProfile], list[JourneyEvent]]


def stream(n_customers: int, n_events: int, seed: int) -> Stream:
    """``n_events`` simulated events of ``n_customers`` customers, ending now."""
    now = datetime.now(UTC)
    span = span_for(n_events, n_customers)
    sim = JourneySimulator(n_customers, seed=seed, start=now - span, span=span)
    events = [e for _, e in zip(range(n_events), sim.events(), strict=False)]
    assert len(events) == n_events, f"the simulator gave {len(events)} events, not {n_events}"
    return sim.profiles(), events


# -- latency --


class _Latencies:
    """Wraps a worker's read and publish: for each committed record, the seconds from the end
    of the read that returned it to the end of its batch's commit (``latencies``), and from
    the broker's acknowledgement of its produce to that commit (``end_to_end``: the time it
    waited in the partition too; ``produced`` is filled by the paced producer)."""

    def __init__(self, worker: ScoringWorker) -> None:
        self.latencies: list[float] = []
        self.end_to_end: list[float] = []
        #: (partition, offset) -> when the producer heard the record was written
        self.produced: dict[tuple[int, int], float] = {}
        read, publish = worker._read, worker._publish
        arrived = [0.0]

        def timed_read(consumer: Consumer) -> list[RawRecord]:
            records = read(consumer)
            arrived[0] = time.perf_counter()
            return records

        def timed_publish(consumer: Consumer, records: list[RawRecord], result: Any) -> bool:
            ok = publish(consumer, records, result)
            if ok:
                now = time.perf_counter()
                self.latencies += [now - arrived[0]] * len(records)
                for r in records:
                    sent = self.produced.get((r.partition, r.offset))
                    if sent is not None:
                        self.end_to_end.append(now - sent)
            return ok

        worker._read = timed_read  # type: ignore[method-assign]
        worker._publish = timed_publish  # type: ignore[method-assign]


def latency_at(settings: Settings, rate: int, seconds: float, seed: int) -> dict[str, float]:
    """p50 and p99 (ms) from arrival in the worker to commit, and from produce to commit
    (``e2e_p50``, ``e2e_p99``), at ``rate`` events/s offered."""
    profiles, events = stream(2_000, int(rate * seconds), seed)
    create_topics(settings)
    publish_backlog(settings, profiles, [])
    worker = ScoringWorker(settings)
    commits = _Latencies(worker)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while worker.ready_after_assignment is None and time.monotonic() < deadline:
        _warm(settings)
        time.sleep(0.2)
    commits.latencies.clear()
    _paced(settings, events, rate, commits.produced)
    deadline = time.monotonic() + 60
    while len(commits.latencies) < len(events) and time.monotonic() < deadline:
        time.sleep(0.05)
    worker.stop()
    thread.join(30)
    return {**_quantiles_ms(commits.latencies, ""), **_quantiles_ms(commits.end_to_end, "e2e_")}


def _quantiles_ms(values: list[float], prefix: str) -> dict[str, float]:
    lat = sorted(values)
    if not lat:
        return {f"{prefix}p50": float("nan"), f"{prefix}p99": float("nan")}
    return {f"{prefix}p50": round(lat[len(lat) // 2] * 1000, 1),
            f"{prefix}p99": round(lat[int(len(lat) * 0.99)] * 1000, 1)}  # fmt: skip


def _warm(settings: Settings) -> None:
    """One record, so the worker commits a first batch and is measurably ready."""
    e = JourneyEvent(event_id=f"warm-{time.time_ns()}", customer_id="warm", type="page_view",
                     occurred_at=datetime.now(UTC))  # fmt: skip
    publish_backlog(settings, [], [e])


def _paced(
    settings: Settings,
    events: list[JourneyEvent],
    rate: int,
    produced: dict[tuple[int, int], float] | None = None,
) -> None:
    """Publish ``events`` at ``rate`` per second, in ticks of 10 ms; ``produced`` gets when
    each record was acknowledged, by (partition, offset)."""

    def acknowledged(err: Any, msg: Any) -> None:
        if err is None and produced is not None:
            produced[msg.partition(), msg.offset()] = time.perf_counter()

    conf = kafka_config(settings, "producer", **{"linger.ms": 0, "on_delivery": acknowledged})
    producer = Producer(conf)
    topic = settings.topics.journey_events
    values = [(e.customer_id.encode(), encode(e)) for e in events]
    per_tick = max(1, rate // 100)
    start = time.perf_counter()
    for i in range(0, len(values), per_tick):
        due = start + i / rate
        pause = due - time.perf_counter()
        if pause > 0:
            time.sleep(pause)
        for key, value in values[i : i + per_tick]:
            produce_record(producer, topic, key, value)
    producer.flush(60)


# -- restart --


def ready_after_assignment(settings: Settings, seed: int) -> float | None:
    """A fresh worker's seconds from assignment to its first commit (empty changelogs)."""
    profiles, events = stream(1_000, 5_000, seed)
    create_topics(settings)
    publish_backlog(settings, profiles, events)
    worker = ScoringWorker(settings)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 120
    while worker.ready_after_assignment is None and time.monotonic() < deadline:
        time.sleep(0.01)
    worker.stop()
    thread.join(30)
    return worker.ready_after_assignment


def kill9_to_first_commit(settings: Settings, seed: int) -> float | None:
    """Seconds from ``kill -9`` of a worker process to the first commit of its replacement
    (same instance id), with a backlog waiting."""
    profiles, events = stream(2_000, 30_000, seed)
    first, second = events[:20_000], events[20_000:]
    create_topics(settings)
    publish_backlog(settings, profiles, first)
    env = {**os.environ, "BENCH_WORKER_SETTINGS": settings.model_dump_json()}
    cmd = [sys.executable, __file__, "worker"]
    w1 = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        if not _until(lambda: _committed(settings) >= len(first), 120):
            return None
        w1.send_signal(signal.SIGKILL)
        killed = time.perf_counter()
        w1.wait(10)
        w2 = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            publish_backlog(settings, [], second)
            if not _until(lambda: _committed(settings) > len(first), 150, pause=0.02):
                return None
            return time.perf_counter() - killed
        finally:
            w2.kill()
            w2.wait(10)
    finally:
        if w1.poll() is None:
            w1.kill()
            w1.wait(10)


def _committed(settings: Settings) -> int:
    c = Consumer(kafka_config(settings, "consumer"))
    try:
        topic, parts = settings.topics.journey_events, range(settings.topics.partitions)
        tps = c.committed([TopicPartition(topic, p) for p in parts], timeout=10)
        return sum(max(0, tp.offset) for tp in tps)
    finally:
        c.close()


def _until(ok: Callable[[], bool], timeout: float, pause: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while not ok():
        if time.monotonic() > deadline:
            return False
        time.sleep(pause)
    return True


# -- memory --


def memory_per_customer(n_customers: int, seed: int) -> dict[str, float]:
    """Bytes allocated per tracked customer in the memory store (tracemalloc, after a
    collection), and the median and p90 changelog record size."""
    profiles, events = stream(n_customers, n_customers * 5, seed)
    records = [RawRecord("journey-events", 0, i, e.customer_id.encode(), encode(e))
               for i, e in enumerate(events)]  # fmt: skip
    profile_records = [RawRecord("customer-profiles", 0, i, p.customer_id.encode(), encode(p))
                       for i, p in enumerate(profiles)]  # fmt: skip
    now = datetime.now(UTC)
    del events, profiles
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    h = Harness(clock=ManualClock(now))
    h.records(profiles=profile_records)
    for i in range(0, len(records), 500):
        h.records(events=records[i : i + 500])
    gc.collect()
    resident = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    states = list(h.stores.partition(0))
    sizes = sorted(len(encode_state(s)) for s in states)
    return {
        "customers": len(states),
        "resident_bytes_per_customer": round(resident / max(1, len(states))),
        "changelog_bytes_per_customer_median": sizes[len(sizes) // 2],
        "changelog_bytes_per_customer_p90": sizes[int(len(sizes) * 0.9)],
        "changelog_bytes_per_customer_mean": round(statistics.fmean(sizes)),
    }


def serving_report(fresh: Callable[..., Settings]) -> dict[str, Any]:
    """Every serving measure, each on topics of its own from ``fresh(**overrides)``."""
    latency = {str(rate): latency_at(fresh(), rate, seconds=10, seed=31 + rate)
               for rate in (2_000, 20_000)}  # fmt: skip
    # a pod's restart with the production session timeout, with and without static membership
    restarts = {
        static: kill9_to_first_commit(
            fresh(static_membership=static).model_copy(update={"session_timeout_ms": 45_000}),
            seed=41,
        )
        for static in (True, False)
    }
    return {
        "latency_ms": latency,
        "ready_after_assignment_s": ready_after_assignment(fresh(), seed=37),
        "kill9_to_first_commit_s": restarts[True],
        "kill9_to_first_commit_without_static_membership_s": restarts[False],
        **memory_per_customer(100_000, seed=43),
    }


def print_worker(
    phases: dict[str, float],
    records: int,
    rounds: list[tuple[float, float | None]],
    rows: dict[str, float],
    peers: dict[str, float | None],
    serving: dict[str, Any],
) -> dict[str, Any]:
    """The exactly-once worker's phases, its peers and how it serves (issue 14's keys).

    ``rounds``: (worker, Quix Streams) events/s measured in turn; the worker's rate and the
    ratio are the medians over the rounds, with every round kept."""
    print("\nexactly-once worker, µs per record by phase (bench/serving.py, BATCH_PHASES):")
    print("  " + "  ".join(f"{p} {phases.get(p, 0.0) / records * 1e6:.1f}" for p in BATCH_PHASES))
    worker_runs = [w for w, _ in rounds]
    worker_rate = statistics.median(worker_runs)
    quix_runs = [q for _, q in rounds if q]
    quix_ratios = [w / q for w, q in rounds if q]
    ratios = {}
    for name, rate in peers.items():
        if name == "quixstreams" and quix_ratios:
            ratios[name] = round(statistics.median(quix_ratios), 2)
            print(f"peer {name}: {_span(quix_runs)} events/s over {len(quix_runs)} rounds "
                  f"(minimal job); Forewarn's exactly-once worker, all of its work, "
                  f"{_span(worker_runs)}: {_span(quix_ratios, '.2f')}x, median "
                  f"{ratios[name]:.2f}x")  # fmt: skip
        elif rate:
            ratios[name] = round(worker_rate / rate, 2)
            print(f"peer {name}: {rate:,.0f} events/s (minimal job); Forewarn's exactly-once "
                  f"worker, all of its work, at {ratios[name]:.2f}x")  # fmt: skip
        else:
            print(f"peer {name}: not measured")
    lat = serving["latency_ms"]
    for rate, q in lat.items():
        print(f"latency at {int(rate):,} events/s offered: p50 {q['p50']} ms, p99 {q['p99']} ms "
              f"(arrival in the worker to commit); from produce to commit p50 {q['e2e_p50']} "
              f"ms, p99 {q['e2e_p99']} ms")  # fmt: skip
    print(f"ready {_seconds(serving['ready_after_assignment_s'])} after assignment (empty "
          "changelogs); kill -9 to the replacement's first commit: "
          f"{_seconds(serving['kill9_to_first_commit_s'])} with static membership, "
          f"{_seconds(serving['kill9_to_first_commit_without_static_membership_s'])} "
          "without")  # fmt: skip
    median = serving["changelog_bytes_per_customer_median"]
    print(f"memory: {serving['resident_bytes_per_customer']:,} B per tracked customer "
          f"({serving['customers']:,} customers); changelog {median} B per customer "
          "(median)")  # fmt: skip
    return {
        "worker_exactly_once_events_per_s": round(worker_rate),
        "worker_exactly_once_runs": [round(w) for w in worker_runs],
        "quixstreams_runs": [round(q) for q in quix_runs],
        "ratio_to_quixstreams_runs": [round(r, 2) for r in quix_ratios],
        "engine_events_per_s": round(rows["engine only, friction + churn model"]),
        "worker_phase_microseconds_per_record": {
            p: round(phases.get(p, 0.0) / records * 1e6, 1) for p in BATCH_PHASES
        },
        "peers": peers,
        "ratio_to_quixstreams": ratios.get("quixstreams"),
        "ratio_to_faust": ratios.get("faust"),
        **serving,
    }


def _span(values: list[float], fmt: str = ",.0f") -> str:
    """min-max of a few measurements, as printed."""
    lo, hi = min(values), max(values)
    return f"{lo:{fmt}}" if f"{lo:{fmt}}" == f"{hi:{fmt}}" else f"{lo:{fmt}}-{hi:{fmt}}"


def _seconds(value: float | None) -> str:
    return "not measured" if value is None else f"{value:.2f} s"


def _worker() -> None:
    """``python bench/serving.py worker``: a scoring worker from BENCH_WORKER_SETTINGS."""
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    settings = Settings.model_validate(json.loads(os.environ["BENCH_WORKER_SETTINGS"]))
    ScoringWorker(settings).run()


if __name__ == "__main__" and sys.argv[1:] == ["worker"]:
    _worker()
