"""``forewarn demo``: broker, topics, a scoring worker, the feedback plane and a minute of
simulated traffic from customers who respond to what they get, then a summary of what
Forewarn did and what it changed. Everything it starts, it stops (also on Ctrl-C).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from confluent_kafka import Consumer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from forewarn.cli.feedback import FeedbackUnreachable, api_get, format_why
from forewarn.experiments.report import Estimate
from forewarn.models.contracts import DeadLetter, Decision, OutreachAction
from forewarn.offline.measures import measure
from forewarn.offline.response import TRUE_EFFECTS, TrueEffect
from forewarn.rules.rulebook import (
    Rulebook,
    default_rulebook_path,
    load_rulebook,
    with_rule_holdouts,
)
from forewarn.streams.broker import EmbeddedBroker, free_port
from forewarn.streams.settings import Settings, TopicNames, kafka_config
from forewarn.streams.simulate import PublishStats, publish_live
from forewarn.streams.tail import format_action
from forewarn.streams.topics import create_topics, format_report

DEMO_PARTITIONS = 2


@dataclass
class Collected:
    """What the demo read back from the output topics."""

    actions: list[OutreachAction] = field(default_factory=list)
    decisions: list[Decision] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


def collect(settings: Settings, into: Collected, stop: threading.Event) -> None:
    t = settings.topics
    consumer = Consumer(
        kafka_config(
            settings,
            "consumer",
            **{"group.id": "forewarn-demo-reader", "enable.partition.eof": False},
        )
    )
    consumer.subscribe([t.actions, t.decisions, t.dlq])
    try:
        while not stop.is_set():
            for m in consumer.consume(500, 0.2):
                if m.error() is not None:
                    continue
                topic, value = m.topic(), m.value() or b""
                with into.lock:
                    if topic == t.actions:
                        into.actions.append(OutreachAction.model_validate_json(value))
                    elif topic == t.decisions:
                        into.decisions.append(Decision.model_validate_json(value))
                    else:
                        into.dead_letters.append(DeadLetter.model_validate_json(value))
    finally:
        consumer.close()


def scrape(port: int, by_label: str | None = None) -> dict[str, float]:
    """Sum of each metric family on a worker's /metrics, by family name (and, with
    ``by_label``, also by ``name{value}`` of that label)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2) as r:
            text = r.read().decode()
    except OSError:
        return {}
    out: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name.endswith(("_created", "_bucket")):
                continue
            out[s.name] = out.get(s.name, 0.0) + s.value
            if by_label and by_label in s.labels:
                key = f"{s.name}{{{s.labels[by_label]}}}"
                out[key] = out.get(key, 0.0) + s.value
    return out


def caught_up(settings: Settings, timeout: float) -> bool:
    """True once the scoring group has committed every published event."""
    topic = settings.topics.journey_events
    c = Consumer(kafka_config(settings, "consumer", **{"group.id": settings.group_id}))
    try:
        deadline = time.monotonic() + timeout
        parts = [TopicPartition(topic, p) for p in range(settings.topics.partitions)]
        while time.monotonic() < deadline:
            committed = c.committed(parts, timeout=5)
            done = all(tp.offset >= c.get_watermark_offsets(tp, timeout=5)[1] for tp in committed)
            if done:
                return True
            time.sleep(0.5)
        return False
    finally:
        c.close()


def _n(x: float) -> str:
    return f"{x:,.0f}"


def summary(out: TextIO, stats: PublishStats, got: Collected, wall: float) -> None:
    def p(*a: object) -> None:
        print(*a, file=out)

    with got.lock:
        actions, decisions, dead = list(got.actions), list(got.decisions), list(got.dead_letters)
    p("\n== What Forewarn did " + "=" * 58)
    p(
        f"simulated {_n(stats.events)} journey events from {_n(stats.profiles)} customers "
        f"in {wall:.0f} s, plus {_n(sum(stats.bad.values()))} malformed records"
    )

    p(f"\nOutreach actions: {_n(len(actions))}, by rule and channel")
    channels = sorted({a.channel.value for a in actions})
    by = Counter((a.rule_id, a.channel.value) for a in actions)
    rules = sorted({a.rule_id for a in actions})
    p(f"  {'rule':<18}" + "".join(f"{c:>8}" for c in channels) + f"{'total':>8}")
    for r in rules:
        row = [by[(r, c)] for c in channels]
        p(f"  {r:<18}" + "".join(f"{n:>8}" for n in row) + f"{sum(row):>8}")

    suppressed = Counter(d.suppressed_by.value for d in decisions if d.suppressed_by)
    p(
        f"\nDecisions: {_n(len(decisions))}; suppressed by policy: "
        + (", ".join(f"{k} {v}" for k, v in suppressed.most_common()) or "none")
    )

    p("\nThree example actions, with their reasons")
    shown: set[str] = set()
    for a in sorted(actions, key=lambda a: -len(a.reasons)):
        if a.rule_id in shown:
            continue
        shown.add(a.rule_id)
        p("  " + format_action(a).replace("\n", "\n  "))
        if len(shown) == 3:
            break

    by_reason = Counter(d.error_type.value for d in dead)
    p(
        "\nDead letters by reason: "
        + (", ".join(f"{k} {v}" for k, v in sorted(by_reason.items())) or "none")
    )

    contacts = [(c, at.timestamp()) for c, at in stats.support_contacts]
    acts = [(a.customer_id, a.triggered_at.timestamp(), a.rule_id, a.playbook) for a in actions]
    cov = measure(contacts, [], acts, customers=max(stats.profiles, 1), days=1)
    lead = cov.lead_time_minutes.median
    covered = round(cov.contact_coverage * len(contacts))
    p(
        f"\nProactive coverage: {covered} of {len(contacts)} simulated support contacts "
        f"({cov.contact_coverage:.0%}) were preceded by an outreach action within 24 h"
        + (f"; median lead time {lead:.0f} minutes." if lead is not None else ".")
    )


def experiments_summary(out: TextIO, report: dict[str, Any] | None, rulebook: Rulebook) -> None:
    """Per rule: what its actions changed against its holdout, next to the simulator's truth."""

    def p(*a: object) -> None:
        print(*a, file=out)

    p("\nWhat outreach changed (the feedback plane, against each rule's 25% holdout)")
    if report is None:
        p("  the feedback plane did not answer; see feedback.log")
        return
    playbooks = {r.id: r.action.playbook for r in rulebook.rules}
    p(f"  {'rule':<18}{'treated':>8}{'held out':>9}{'pending':>8}"
      f"{'contact risk ratio [95% CI]':>30}{'true ratio per action':>23}")  # fmt: skip
    for r in report["rules"]:
        measured = Estimate.model_validate(r["measures"]["contact"]["risk_ratio"]).text()
        truth = TRUE_EFFECTS.get(playbooks.get(r["rule_id"], ""), TrueEffect()).contact
        pending = r["pending_treated"] + r["pending_holdout"]
        p(f"  {r['rule_id']:<18}{r['treated']:>8}{r['holdout']:>9}{pending:>8}"
          f"{measured:>30}{f'{1 - truth:.2f}':>23}")  # fmt: skip
    p(
        "  Counted once a trigger's 24 h window has closed in simulated time. A minute of "
        "traffic gives wide intervals, and the live effect is smaller than the truth: an "
        "action reaches the simulated customer about a second (an hour of simulated time) "
        "after its trigger. `forewarn evaluate --respond` measures it on a longer history."
    )


def why_not(out: TextIO, feedback_port: int, got: Collected) -> None:
    """``forewarn why`` for a customer whose rule fired but who was held out."""
    with got.lock:
        held = [d for d in got.decisions if d.arm == "holdout"]
    if not held:
        return
    cid, rule = held[-1].customer_id, held[-1].rule_id
    print(f"\nWhy did {cid} get no {rule} action? (forewarn why {cid})", file=out)
    try:
        status, body = api_get(f"http://127.0.0.1:{feedback_port}/customers/{cid}")
    except FeedbackUnreachable:
        status = 0
    if status != 200:
        print("  the feedback plane did not answer", file=out)
        return
    body["decisions"] = body["decisions"][:3]
    print("  " + format_why(body).replace("\n", "\n  "), file=out)


def _start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as f:
        return subprocess.Popen(
            [sys.executable, "-m", "forewarn.cli", *args],
            env=env,
            stdout=f,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )


def _stop(proc: subprocess.Popen[bytes] | None) -> int | None:
    if proc is None or proc.poll() is not None:
        return None if proc is None else proc.returncode
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(timeout=10)


def _experiments(feedback_port: int, decisions: int, timeout: float = 60) -> dict[str, Any] | None:
    """The feedback plane's report once it has read every decision (or the timeout)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        m = scrape(feedback_port, by_label="source")
        if m.get("forewarn_feedback_records_total{decisions}", 0.0) >= decisions:
            break
        time.sleep(0.5)
    try:
        status, report = api_get(f"http://127.0.0.1:{feedback_port}/experiments")
    except FeedbackUnreachable:
        return None
    return dict(report) if status == 200 else None


def run_demo(
    *,
    duration: float = 60,
    rate: float = 1000,
    customers: int = 2000,
    seed: int = 7,
    bad_rate: float = 0.002,
    out: TextIO = sys.stdout,
) -> int:
    workdir = Path(tempfile.mkdtemp(prefix="forewarn-demo-"))

    def p(*a: object) -> None:
        print(*a, file=out, flush=True)

    broker = EmbeddedBroker(log=workdir / "broker.log")
    worker: subprocess.Popen[bytes] | None = None
    feedback: subprocess.Popen[bytes] | None = None
    stop = threading.Event()
    reader: threading.Thread | None = None
    got = Collected()
    t0 = time.monotonic()
    try:
        p(f"starting the embedded broker (Tansu, memory storage); logs in {workdir}")
        broker.start()
        port, feedback_port = free_port(), free_port()
        rules = workdir / "rulebook.yaml"
        rules.write_text(with_rule_holdouts(default_rulebook_path().read_text(), 25))
        settings = Settings(
            bootstrap_servers=broker.bootstrap,
            http_port=port,
            session_timeout_ms=6000,
            topics=TopicNames(partitions=DEMO_PARTITIONS),
        )
        p(f"broker on {broker.bootstrap}\n")
        p(format_report(create_topics(settings)) + "\n")
        env = {
            **os.environ,
            "FOREWARN_BOOTSTRAP_SERVERS": broker.bootstrap,
            "FOREWARN_HTTP_PORT": str(port),
            "FOREWARN_SESSION_TIMEOUT_MS": "6000",
            "FOREWARN_TOPICS__PARTITIONS": str(DEMO_PARTITIONS),
            "FOREWARN_RULES_PATH": str(rules),
            "FOREWARN_FEEDBACK_HTTP_PORT": str(feedback_port),
            "FOREWARN_FEEDBACK__SESSION_TIMEOUT_SECONDS": "6",
        }
        worker = _start(["score"], env, workdir / "worker.log")
        feedback = _start(["feedback"], env, workdir / "feedback.log")
        reader = threading.Thread(target=collect, args=(settings, got, stop), daemon=True)
        reader.start()
        p(f"scoring worker started (pid {worker.pid}); metrics on http://127.0.0.1:{port}/metrics")
        p(f"feedback plane started (pid {feedback.pid}); why and experiments on "
          f"http://127.0.0.1:{feedback_port}")  # fmt: skip
        p("the shipped rulebook, each rule holding out 25% of its customers; customers respond "
          "to what they get and a simulated tool reports outcomes")  # fmt: skip
        p(f"simulating {customers:,} customers at {rate:,.0f} events/s for {duration:.0f} s\n")
        progress = _progress(p, port, got, t0)
        publish_started = time.monotonic()
        stats = publish_live(settings, customers=customers, rate=rate, duration=duration,
                             seed=seed, bad_rate=bad_rate, on_progress=progress,
                             respond=True)  # fmt: skip
        wall = time.monotonic() - publish_started
        p("\nsimulation done; waiting for the worker to catch up")
        if not caught_up(settings, timeout=120):
            p("the worker did not catch up within 120 s; the summary is partial")
        progress(stats)
        rc = _stop(worker)
        p(f"scoring worker stopped on SIGTERM (exit code {rc})")
        time.sleep(1.5)  # let the reader drain what the last batch produced
        with got.lock:
            n_decisions = len(got.decisions)
        report = _experiments(feedback_port, n_decisions)
        summary(out, stats, got, wall)
        experiments_summary(out, report, load_rulebook(rules))
        why_not(out, feedback_port, got)
        return 0 if rc == 0 else 1
    except KeyboardInterrupt:
        p("\ninterrupted: stopping everything the demo started")
        return 0
    finally:
        stop.set()
        _stop(worker)
        _stop(feedback)
        if reader is not None:
            reader.join(timeout=5)
        broker.stop()
        p(f"stopped the worker, the feedback plane and the broker "
          f"({time.monotonic() - t0:.0f} s in all)")  # fmt: skip


def _progress(
    p: Callable[..., None], port: int, got: Collected, t0: float
) -> Callable[[PublishStats], None]:
    last = [time.monotonic(), 0.0, 0]

    def progress(s: PublishStats) -> None:
        m = scrape(port)
        scored = m.get("forewarn_events_total", 0.0)
        now = time.monotonic()
        with got.lock:
            n_act, n_dead = len(got.actions), len(got.dead_letters)
        dt = max(1e-6, now - last[0])
        per_s = (scored - last[1]) / dt
        p(
            f"  {now - t0:5.0f}s  events in {_n(scored):>8} ({_n(per_s):>6}/s)"
            f"  actions out {_n(n_act):>6} ({_n((n_act - last[2]) / dt):>4}/s)"
            f"  dead letters {_n(n_dead):>4}  published {_n(s.events)}"
        )
        last[:] = [now, scored, n_act]

    return progress
