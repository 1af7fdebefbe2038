"""Forewarn benchmarks: ``make bench``.

One run, one data set, baselines measured in the same run on the same broker:

* ``raw consume``          confluent-kafka ``consume(500)`` loop that touches nothing: the ceiling;
* ``consume + json.loads`` the same loop decoding every value (a floor for any JSON pipeline);
* ``engine only``          the pure scoring engine on in-memory records (no Kafka), with
                           friction alone and with the shipped churn model (CPU µs per event);
* ``engine only, + contact risk, feature rows`` with a contact-risk model served and a
                           share of moments sampled as feature rows (a worker beside
                           ``forewarn learn``, the default);
* ``engine only, shipped / 200 rules`` the default rulebook, then filled up to 200
                           (shadow rules with CEL conditions on trouble events): the
                           trigger index keeps the cost nearly flat; and CEL µs per
                           condition evaluated;
* ``scoring worker, at-least-once`` the real worker (default rulebook): consume, decode,
                           state, score, decide, produce outputs and the state changelog,
                           flush, commit offsets;
* ``scoring worker, exactly-once``  the same with one Kafka transaction per batch (the
                           default): the difference is what exactly-once costs;
* ``exactly-once, a poison record in every batch`` the same stream with one malformed record
                           (nesting too deep, a 5,000-digit number, a non-UTF-8 value, broken
                           JSON, in turn) among every 500: each is dead-lettered with its
                           reason in the normal pass, so the rate stays near the clean one
                           (before issue 9, one such record cost a changelog re-read and a
                           record-by-record replay of its batch).
* ``feedback plane``       ``forewarn feedback`` (a process) counting a backlog of decisions,
                           outcomes and milestones (bench/feedback_plane.py): its records/s,
                           and the journey events per second it can follow given what the
                           scoring worker published per event in the same run, next to the
                           worker's events/s. ``--only feedback`` runs this step alone.

Also: restore speed (a fresh worker reading the changelog the exactly-once run wrote) and
the size of one customer's serialized state; the exactly-once worker's µs per record in each
phase of its batches; the **peers** in the same run on the same topic (bench/peers.py: a Quix
Streams application with RocksDB state, changelog and exactly-once, and a faust-streaming
agent with a table, each doing the minimal job), with Forewarn's ratio to each
(``--no-peers`` skips them); and how the worker serves (bench/serving.py): latency at 2,000
and 20,000 events/s offered, ready after assignment, kill -9 to the replacement's first
commit, memory and changelog bytes per customer.

Prints a table and JSON (also written to bench/results/latest.json). Timing is for
information: no test asserts it. Set FOREWARN_BENCH_BOOTSTRAP to use another Kafka.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

# bench/feedback_plane.py, beside this script
from feedback_plane import (
    FeedbackRun,
    JourneyMix,
    feedback_load,
    feedback_summary,
    run_feedback,
)
from peers import measure_peer, measure_peers, peers_python
from serving import print_worker, serving_report

from forewarn.models.contracts import CustomerProfile, DeadLetterReason, JourneyEvent
from forewarn.models.features import CONTACT_FEATURES
from forewarn.models.risk import (
    LinearModel,
    RiskModel,
    default_model_path,
    load_risk_model,
    model_file_bytes,
)
from forewarn.models.state_codec import encode_state
from forewarn.offline.samples import bad_record
from forewarn.offline.simulator import JourneySimulator, span_for
from forewarn.pipeline.clocks import ManualClock
from forewarn.pipeline.codecs import RawRecord, encode
from forewarn.pipeline.harness import Harness
from forewarn.pipeline.learning_rows import FEATURE_ROW_SHARE
from forewarn.rules.conditions import compile_condition, evaluate
from forewarn.rules.rulebook import (
    Rulebook,
    default_rulebook_path,
    load_rulebook,
    load_rulebook_text,
)
from forewarn.streams.broker import EmbeddedBroker
from forewarn.streams.scoring.worker import ScoringWorker, tune_garbage_collector
from forewarn.streams.settings import Settings, TopicNames, kafka_config
from forewarn.streams.simulate import produce_record, publish_backlog
from forewarn.streams.topics import create_topics

RESULTS = Path(__file__).parent / "results"


@contextmanager
def broker() -> Iterator[str]:
    given = os.environ.get("FOREWARN_BENCH_BOOTSTRAP")
    if given:
        yield given
        return
    with EmbeddedBroker() as b:
        yield b.bootstrap


def settings_for(bootstrap: str, partitions: int, **overrides: Any) -> Settings:
    tag = uuid.uuid4().hex[:8]
    return Settings(
        bootstrap_servers=bootstrap,
        group_id=f"forewarn-bench-{tag}",
        topics=TopicNames(partitions=partitions).suffixed(f"bench-{tag}"),
        session_timeout_ms=6000,
        http_port=0,
        instance_id=f"bench-{tag}",
        **overrides,
    )


def consume_all(settings: Settings, topic: str, n: int, decode: bool) -> float:
    """Seconds from the first fetch to the n-th record, for a plain consume loop.

    The partitions are assigned, not subscribed: timed from a group join's end, the records
    the client had prefetched meanwhile were only drained from memory (one run read 200,000
    "at" 2.6 million a second, the next at 190,000)."""
    c = Consumer(
        kafka_config(
            settings,
            "consumer",
            **{"group.id": f"raw-{uuid.uuid4().hex[:8]}", "enable.partition.eof": False},
        )
    )
    parts = c.list_topics(topic, timeout=30).topics[topic].partitions
    seen, first = 0, time.perf_counter()
    c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
    deadline = time.monotonic() + 300
    while seen < n and time.monotonic() < deadline:
        msgs = c.consume(500, 1.0)
        for m in msgs:
            if m.error() is None:
                seen += 1
                if decode:
                    json.loads(m.value() or b"{}")
    elapsed = time.perf_counter() - first
    c.close()
    return elapsed


def run_worker(settings: Settings, n: int, phases: dict[str, float] | None = None) -> float:
    """Seconds from the worker's first record to its n-th; ``phases`` gets the seconds it
    spent in each phase of its batches."""
    worker = ScoringWorker(settings)
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    first = 0.0
    deadline = time.monotonic() + 600
    while worker.records < n and time.monotonic() < deadline:
        if worker.records and not first:
            first = time.perf_counter()
        time.sleep(0.005)
    elapsed = time.perf_counter() - first
    worker.stop()
    thread.join(30)
    if phases is not None:
        phases.update(worker.phase_seconds)
    return elapsed


def paired_rounds(
    bootstrap: str,
    partitions: int,
    profiles: list[Any],
    events: list[Any],
    rounds: int,
    skip_peers: bool,
) -> list[tuple[float, float | None]]:
    """(Forewarn's exactly-once worker, Quix Streams) events/s, one after the other on a
    fresh topic each round: the ratio is taken pair by pair, so the machine's drift between
    rounds does not count against either."""
    quix = None if skip_peers else peers_python()
    out = []
    for _ in range(rounds):
        s = settings_for(bootstrap, partitions)
        create_topics(s)
        publish_backlog(s, profiles, events)
        rate = len(events) / run_worker(s, len(events) + len(profiles))
        peer = None if quix is None else measure_peer(
            "quix", quix, bootstrap, s.topics.journey_events, len(events), partitions
        )  # fmt: skip
        print(f"round: exactly-once worker {rate:,.0f}, Quix Streams "
              f"{'-' if peer is None else f'{peer:,.0f}'} events/s", flush=True)  # fmt: skip
        out.append((rate, peer))
    return out


def count_published(settings: Settings, topic: str) -> int:
    """Committed records on ``topic``, read from its start to its end."""
    c = Consumer(
        kafka_config(
            settings,
            "consumer",
            **{"group.id": f"count-{uuid.uuid4().hex[:8]}", "enable.partition.eof": True},
        )
    )
    parts = range(settings.topics.partitions)
    c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
    ended: set[int] = set()
    n = 0
    deadline = time.monotonic() + 60
    while len(ended) < len(parts) and time.monotonic() < deadline:
        for m in c.consume(500, 1.0):
            err = m.error()
            if err is None:
                n += 1
            elif err.code() == KafkaError._PARTITION_EOF:
                ended.add(m.partition() or 0)
    c.close()
    return n


def feedback_step(
    bootstrap: str,
    partitions: int,
    events: list[JourneyEvent],
    profiles: list[CustomerProfile],
    decisions: int,
) -> tuple[FeedbackRun, float]:
    """The feedback plane on topics of its own, and the step's seconds in all."""
    t = time.perf_counter()
    s = settings_for(bootstrap, partitions)
    create_topics(s)
    run = run_feedback(s, feedback_load(events, profiles, decisions))
    return run, time.perf_counter() - t


def print_feedback(run: FeedbackRun, mix: JourneyMix, step_s: float) -> dict[str, object]:
    """Prints the feedback plane's lines; its numbers for the results file."""
    text, numbers = feedback_summary(run, mix)
    print(f"\n{text}\n  (the feedback step took {step_s:.0f} s)")
    if run.problems:
        print(f"  {len(run.problems)} errors in the feedback plane's log ({run.log}), the first:")
    for line in run.problems[:5]:
        print(f"    {line}")
    return {**numbers, "step_seconds": round(step_s)}


def feedback_only(
    partitions: int, events: list[JourneyEvent], profiles: list[CustomerProfile], decisions: int
) -> int:
    """``--only feedback``: the feedback step alone; prints, writes no results file."""
    with broker() as bootstrap:
        run, step_s = feedback_step(bootstrap, partitions, events, profiles, decisions)
    load = run.load
    mix = JourneyMix(
        load.per_event(load.decisions),
        load.per_event(load.milestones),
        None,
        "the offline replay of the bench history",
    )
    print(json.dumps(print_feedback(run, mix, step_s), indent=2))
    return 0


POISONS = (
    DeadLetterReason.nesting_too_deep,
    DeadLetterReason.number_out_of_range,
    DeadLetterReason.not_utf8,
    DeadLetterReason.malformed_json,
)


def publish_poisoned(settings: Settings, profiles: list[Any], events: list[Any], every: int) -> int:
    """The events with one malformed record after every ``every`` of them; how many."""
    from confluent_kafka import Producer

    publish_backlog(settings, profiles, [])
    producer = Producer(kafka_config(settings, "producer", **{"linger.ms": 20}))
    topic, poisons = settings.topics.journey_events, 0
    for i, e in enumerate(events):
        produce_record(producer, topic, e.customer_id.encode(), encode(e))
        if i % every == every - 1:
            key, value, headers = bad_record(POISONS[poisons % len(POISONS)], datetime.now(UTC), i)
            produce_record(producer, topic, key, value, headers)
            poisons += 1
    producer.flush(60)
    return poisons


def restore(settings: Settings) -> tuple[int, int, float]:
    """(customers, changelog records, seconds) for a fresh worker to restore everything."""
    worker = ScoringWorker(settings.model_copy(update={"instance_id": "bench-restore"}))
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 300
    parts = settings.topics.partitions
    while len(worker.restores) < parts and time.monotonic() < deadline:
        time.sleep(0.01)
    worker.stop()
    thread.join(30)
    rs = worker.restores
    # the partitions restore together: each result carries the whole restore's time
    return sum(r.customers for r in rs), sum(r.records for r in rs), max(r.seconds for r in rs)


TROUBLE = (
    "payment_failed",
    "checkout_error",
    "delivery_delayed",
    "error_page",
    "app_crash",
    "login_failed",
    "search_no_results",
    "rage_burst",
    "help_center_view",
    "slow_page",
)


def hand_made_contact_model() -> RiskModel:
    """A contact-risk model with every feature in use (the cost does not depend on what it
    learned)."""
    n = len(CONTACT_FEATURES)
    linear = LinearModel(features=list(CONTACT_FEATURES), mean=[0.5] * n, scale=[2.0] * n,
                         coef=[0.1] * n, intercept=-3.0)  # fmt: skip
    card = load_risk_model(default_model_path()).card.model_copy(
        update={"target": "contact", "features": list(CONTACT_FEATURES), "model_version": "bench",
                "model_sha256": hashlib.sha256(model_file_bytes(linear)).hexdigest()}
    )  # fmt: skip
    return RiskModel(card, linear, Path("bench"))


def many_rules(n: int) -> Rulebook:
    """The default rulebook filled up to ``n`` rules with shadow rules with CEL conditions on
    trouble events."""
    base = default_rulebook_path().read_text()
    extra = ["", "  # generated for the benchmark"]
    for i in range(n - len(load_rulebook().rules)):
        kind = TROUBLE[i % len(TROUBLE)]
        extra += [
            f"  - id: generated_{i}",
            f"    triggers: {{events: [{kind}]}}",
            f"    when: \"scores.friction > {i % 90}.0 && customer.tier == 'tier{i % 7}'\"",
            "    action: {playbook: bench, channels: [email], template: t, priority: 10}",
            "    policies: {shadow: true}",
        ]
    return load_rulebook_text(base + "\n".join(extra) + "\n", f"generated-{n}.yaml")


def rulebook_scaling(
    records: list[RawRecord], profile_records: list[RawRecord], now: datetime
) -> tuple[dict[str, float], float]:
    """Engine events/s with the shipped rules and with 200, and CEL µs per rule condition
    evaluated."""
    out: dict[str, float] = {}
    shipped = len(load_rulebook().rules)
    for n in (shipped, 200):
        book = load_rulebook() if n == shipped else many_rules(n)
        h = Harness(rulebook=book, clock=ManualClock(now))
        h.records(profiles=profile_records)
        t = time.perf_counter()
        for i in range(0, len(records), 500):
            h.records(events=records[i : i + 500])
        label = "shipped" if n == shipped else str(n)
        out[f"engine only, {label} rules"] = len(records) / (time.perf_counter() - t)
    expr = "scores.friction > 40.0 && customer.tier == 'tier3'"
    compile_condition(expr)
    from forewarn.models.contracts import JourneyEvent
    from forewarn.models.state import CustomerState
    from forewarn.rules.conditions import condition_data
    from forewarn.rules.moment import Moment

    e = JourneyEvent(event_id="b", customer_id="c", type="payment_failed", occurred_at=now)
    m = Moment(e, now.timestamp(), CustomerState("c"), (), False, 50.0, 10.0, [0.0])
    data = condition_data(m)
    reps = 20_000
    t = time.perf_counter()
    for _ in range(reps):
        evaluate(expr, data)
    per_eval = (time.perf_counter() - t) / reps * 1e6
    t = time.perf_counter()
    for _ in range(2_000):
        condition_data(m)
    per_moment = (time.perf_counter() - t) / 2_000 * 1e6
    return out, per_eval + per_moment / 5  # inputs are built once per moment, for ~5 rules


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--events", type=int, default=200_000)
    ap.add_argument("--customers", type=int, default=5_000)
    ap.add_argument("--partitions", type=int, default=2)
    ap.add_argument(
        "--feedback-decisions",
        type=int,
        default=7_500,
        help="decisions for the feedback plane (with about as many outcomes and the "
        "workload's milestones)",
    )
    ap.add_argument("--only", choices=["feedback"], help="run this step alone")
    ap.add_argument("--no-peers", action="store_true", help="skip the Quix and faust peers")
    ap.add_argument("--rounds", type=int, default=3,
                    help="exactly-once worker and Quix Streams measured in turn this many "
                    "times (ranges, and the ratio pair by pair)")  # fmt: skip
    args = ap.parse_args()
    tune_garbage_collector()  # as the worker does: every row runs with its settings

    now = datetime.now(UTC)
    span = span_for(args.events, args.customers)
    sim = JourneySimulator(args.customers, seed=2026, start=now - span, span=span)
    t = time.perf_counter()
    events = [e for _, e in zip(range(args.events), sim.events(), strict=False)]
    profiles = sim.profiles()
    gen_s = time.perf_counter() - t
    values = [(e.customer_id.encode(), encode(e)) for e in events]
    n = len(values)
    print(f"generated {n:,} events from {args.customers:,} customers in {gen_s:.1f} s", flush=True)
    if args.only == "feedback":
        return feedback_only(args.partitions, events, profiles, args.feedback_decisions)

    rows: dict[str, float] = {}
    with broker() as bootstrap:
        s = settings_for(bootstrap, args.partitions)
        create_topics(s)
        publish_backlog(s, profiles, events)
        loose = settings_for(bootstrap, args.partitions, exactly_once=False)
        create_topics(loose)
        publish_backlog(loose, profiles, events)
        poisoned = settings_for(bootstrap, args.partitions)
        create_topics(poisoned)
        poisons = publish_poisoned(poisoned, profiles, events, every=499)

        rows["raw consume"] = n / consume_all(s, s.topics.journey_events, n, decode=False)
        rows["consume + json.loads"] = n / consume_all(s, s.topics.journey_events, n, decode=True)
        rows["scoring worker, at-least-once"] = n / run_worker(loose, n + len(profiles))
        phases: dict[str, float] = {}
        eos_s = run_worker(s, n + len(profiles), phases)
        rows["scoring worker, exactly-once"] = n / eos_s
        peer_rates = measure_peers(bootstrap, s.topics.journey_events, n, args.partitions,
                                   skip=args.no_peers)  # fmt: skip
        more = paired_rounds(bootstrap, args.partitions, profiles, events, args.rounds - 1,
                             args.no_peers)  # fmt: skip
        rounds = [(n / eos_s, peer_rates["quixstreams"]), *more]
        serving = serving_report(lambda **o: settings_for(bootstrap, args.partitions, **o))
        rows["exactly-once, a poison in every batch"] = n / run_worker(
            poisoned, n + poisons + len(profiles)
        )
        restored, restore_records, restore_s = restore(s)
        worker_mix = (
            count_published(s, s.topics.decisions) / n,
            count_published(s, s.topics.milestones) / n,
        )
        feedback, feedback_s = feedback_step(
            bootstrap, args.partitions, events, profiles, args.feedback_decisions
        )

    records = [RawRecord("journey-events", 0, i, k, v) for i, (k, v) in enumerate(values)]
    profile_records = [
        RawRecord("customer-profiles", 0, i, pr.customer_id.encode(), encode(pr))
        for i, pr in enumerate(profiles)
    ]
    per_event_us: dict[str, float] = {}
    shipped = load_risk_model(default_model_path())
    learning = "engine only, + contact risk, feature rows"
    for name, churn in (("engine only, friction (no Kafka)", None),
                        ("engine only, friction + churn model", shipped),
                        (learning, shipped)):  # fmt: skip
        h = Harness(churn=churn, clock=ManualClock(now))
        if name == learning:  # as a worker serving a learned model and sampling rows
            h.engine.use(contact=hand_made_contact_model())
            h.engine.feature_rows = FEATURE_ROW_SHARE
        h.records(profiles=profile_records)
        t, cpu = time.perf_counter(), time.process_time()
        for i in range(0, n, 500):
            h.records(events=records[i : i + 500])
        rows[name] = n / (time.perf_counter() - t)
        per_event_us[name] = (time.process_time() - cpu) / n * 1e6
    sizes = sorted(len(encode_state(st)) for st in h.stores.partition(0))
    rule_rows, cel_us = rulebook_scaling(records, profile_records, now)
    rows.update(rule_rows)
    model_cost = (
        per_event_us["engine only, friction + churn model"]
        - per_event_us["engine only, friction (no Kafka)"]
    )
    contact_cost = per_event_us[learning] - per_event_us["engine only, friction + churn model"]
    eos_cost = 1 - rows["scoring worker, exactly-once"] / rows["scoring worker, at-least-once"]
    clean = rows["scoring worker, exactly-once"]
    poison_ratio = rows["exactly-once, a poison in every batch"] / clean

    ceiling = rows["raw consume"]
    print(f"\n{'run':<34}{'events/s':>12}{'vs raw consume':>16}")
    for name, rate in rows.items():
        print(f"{name:<34}{rate:>12,.0f}{rate / ceiling:>15.2f}x")
    for name, us in per_event_us.items():
        print(f"{name}: {us:.1f} µs CPU per event")
    print(f"the churn model adds {model_cost:.1f} µs per event (features + batch scoring)")
    print(
        f"a contact-risk model and {FEATURE_ROW_SHARE:.0%} feature rows add {contact_cost:.1f} "
        "µs per event"
    )
    print(
        f"rules: {rows['engine only, 200 rules']:,.0f} events/s with 200 rules against "
        f"{rows['engine only, shipped rules']:,.0f} with the shipped ones "
        f"({rows['engine only, 200 rules'] / rows['engine only, shipped rules']:.2f}x); CEL "
        f"{cel_us:.1f} µs per rule condition evaluated (with its share of the inputs)"
    )
    print(f"\nexactly-once costs {eos_cost:.1%} of at-least-once throughput (goal: < 25%)")
    print(
        f"one malformed record in every 499 ({poisons:,} in all): "
        f"{poison_ratio:.2f}x the clean exactly-once rate (goal: within 2x, i.e. >= 0.50x)"
    )
    print(
        f"restore: {restored:,} customers from {restore_records:,} changelog records in "
        f"{restore_s:.2f} s = {restored / restore_s:,.0f} customers/s, "
        f"{restore_records / restore_s:,.0f} records/s"
    )
    print(
        f"state per customer: median {sizes[len(sizes) // 2]} B, "
        f"p90 {sizes[int(len(sizes) * 0.9)]} B, max {sizes[-1]} B"
    )
    mix = JourneyMix(
        *worker_mix,
        rows["scoring worker, exactly-once"],
        "published by the scoring worker, exactly-once, in this run",
    )
    feedback_numbers = print_feedback(feedback, mix, feedback_s)
    worker_numbers = print_worker(phases, n + len(profiles), rounds, rows, peer_rates, serving)
    result: dict[str, Any] = {
        "events": n,
        "customers": args.customers,
        "partitions": args.partitions,
        "events_per_second": {k: round(v) for k, v in rows.items()},
        "ratio_to_raw_consume": {k: round(v / ceiling, 3) for k, v in rows.items()},
        "exactly_once_cost": round(eos_cost, 3),
        "poison_in_every_batch_ratio": round(poison_ratio, 3),
        "cpu_microseconds_per_event": {k: round(v, 1) for k, v in per_event_us.items()},
        "churn_model_microseconds_per_event": round(model_cost, 1),
        "contact_risk_and_rows_microseconds_per_event": round(contact_cost, 1),
        "cel_microseconds_per_condition": round(cel_us, 1),
        "restore_customers_per_second": round(restored / restore_s),
        "restore_records_per_second": round(restore_records / restore_s),
        "restore_records_per_s": round(restore_records / restore_s),  # issue 14's name
        "restore": {
            "customers": restored,
            "records": restore_records,
            "seconds": round(restore_s, 3),
        },
        "feedback_plane": feedback_numbers,
        **worker_numbers,
        "state_bytes": {
            "median": sizes[len(sizes) // 2],
            "p90": sizes[int(len(sizes) * 0.9)],
            "max": sizes[-1],
        },
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "broker": "FOREWARN_BENCH_BOOTSTRAP"
        if os.environ.get("FOREWARN_BENCH_BOOTSTRAP")
        else "embedded Tansu (memory)",
        "at": now.isoformat(timespec="seconds"),
    }
    text = json.dumps(result, indent=2)
    print("\n" + text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "latest.json").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
