"""``forewarn feedback`` on the real broker, as a process of its own: it reads the decisions
and milestones a real scoring worker publishes and the outcomes a marketing tool reports,
and its API answers with the counts the pure ledger gives for the same records; bad
outcomes go to the dead letters with their reason; an aborted transaction, a replay and a
restart count nothing twice."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiokafka.partitioner import DefaultPartitioner
from confluent_kafka import Producer

from forewarn.cli.feedback import format_experiments
from forewarn.experiments.ledger import CustomerLedger, record_decision, record_milestone
from forewarn.experiments.report import experiment_report, holdout_shares, tally
from forewarn.models.contracts import DeadLetter, Decision, Milestone, Outcome, OutreachAction
from forewarn.offline.simulator import JourneySimulator
from forewarn.pipeline.codecs import encode
from forewarn.rules.rulebook import load_rulebook
from forewarn.streams.settings import FeedbackConfig, Settings, kafka_config
from tests.conftest import POLICIES_RULEBOOK, read_all, settings_env, wait_committed

pytestmark = pytest.mark.integration


@pytest.fixture
def holdout_rules(tmp_path: Path) -> Path:
    """The policy tests' rulebook with 30% of customers held out."""
    text = POLICIES_RULEBOOK.read_text().replace(
        'version: "2026.11-1"', 'version: "2026.11-1-holdout"\nholdout_percent: 30'
    )
    path = tmp_path / "holdout.yaml"
    path.write_text(text)
    return path


class FeedbackProcess:
    """``forewarn feedback`` in a subprocess, its output in a file."""

    def __init__(self, s: Settings, log: Path) -> None:
        self.s = s
        self.log = log
        self.url = f"http://127.0.0.1:{s.feedback_http_port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "forewarn.cli", "feedback"],
                env=settings_env(self.s),
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        wait_for(lambda: self.get("/readyz")[0] == 200, 90, "the feedback plane is ready", self)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None

    def get(self, path: str) -> tuple[int, Any]:
        try:
            with urllib.request.urlopen(self.url + path, timeout=10) as r:
                body = r.read()
                return r.status, json.loads(body) if path != "/metrics" else body.decode()
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"{}")
        except (urllib.error.URLError, OSError):
            return 0, None

    def metric(self, name: str, **labels: str) -> float:
        _, text = self.get("/metrics")
        want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        for line in (text or "").splitlines():
            if line.startswith(f"{name}{{{want}}} ") or (
                not labels and line.startswith(name + " ")
            ):
                return float(line.rsplit(" ", 1)[1])
        return 0.0


def wait_for(
    check: Callable[[], bool], timeout: float, what: str, fb: FeedbackProcess | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.5)
    tail = fb.log.read_text()[-3000:] if fb is not None and fb.log.exists() else ""
    raise AssertionError(f"timed out waiting until {what}\n{tail}")


def wait_counted(fb: FeedbackProcess, counts: dict[str, int], timeout: float) -> None:
    """Until the plane has counted exactly this many records of each source."""

    def counted() -> bool:
        return all(
            fb.metric("forewarn_feedback_records_total", source=source, result="counted") == n
            for source, n in counts.items()
        )

    wait_for(counted, timeout, f"the feedback plane counted {counts}", fb)


@pytest.fixture
def feedback(tmp_path: Path) -> Iterator[Callable[[Settings], FeedbackProcess]]:
    started: list[FeedbackProcess] = []

    def start(s: Settings) -> FeedbackProcess:
        fb = FeedbackProcess(s, tmp_path / f"feedback-{len(started)}.log")
        started.append(fb)
        fb.start()
        return fb

    yield start
    for fb in started:
        fb.stop()


def feedback_settings(
    make_settings: Callable[..., Settings], session_seconds: float = 6, **overrides: Any
) -> Settings:
    tag = uuid.uuid4().hex[:8]
    return make_settings(
        feedback=FeedbackConfig(
            group_id=f"feedback-{tag}",
            session_timeout_seconds=session_seconds,
            orphan_grace_minutes=0,
        ),
        **overrides,
    )


def produce(s: Settings, topic: str, records: list[tuple[str, bytes]]) -> None:
    p = Producer(kafka_config(s, "producer"))
    for key, value in records:
        p.produce(topic, key=key.encode(), value=value)
    assert p.flush(30) == 0


def clock_records(s: Settings, at: datetime) -> list[tuple[str, bytes]]:
    """One milestone per ledger partition at ``at``, from customers of no experiment: every
    partition's stream time moves there, and every window before it closes."""
    partitions = list(range(s.topics.partitions))
    found: dict[int, str] = {}
    i = 0
    while len(found) < len(partitions):
        cid = f"clock-{i}"
        found.setdefault(DefaultPartitioner()(cid.encode(), partitions, partitions), cid)
        i += 1
    return [
        (
            cid,
            encode(
                Milestone(
                    event_id=f"tick-{cid}-{at.timestamp()}",
                    customer_id=cid,
                    type="purchase",
                    occurred_at=at,
                )
            ),
        )
        for cid in found.values()
    ]


def wait_for_clock(fb: FeedbackProcess, s: Settings, at: datetime, timeout: float = 60) -> None:
    """Until every ledger partition's stream time reached ``at`` (the report's ``as_of`` is
    the latest partition's: waiting on it left a slower partition's windows open, seen on CI)."""

    def reached() -> bool:
        return all(
            fb.metric("forewarn_feedback_watermark_seconds", partition=str(p)) >= at.timestamp()
            for p in range(s.topics.partitions)
        )

    wait_for(reached, timeout, f"every partition reached the clock at {at.isoformat()}", fb)


def partition_watermarks(fb: FeedbackProcess, s: Settings) -> dict[int, datetime]:
    """Where each ledger partition's stream time stands, from the plane's gauges."""
    found = {}
    for p in range(s.topics.partitions):
        at = fb.metric("forewarn_feedback_watermark_seconds", partition=str(p))
        if at:
            found[p] = datetime.fromtimestamp(at, UTC)
    return found


def expected_report(s: Settings, watermark: datetime | dict[int, datetime]) -> dict[str, Any]:
    """The report the pure ledger gives for every decision and milestone on the topics, with
    one stream time for every ledger or each ledger partition's own (as the plane keeps it:
    a window closes by its partition's time, and partitions stand apart)."""
    ledgers: dict[str, CustomerLedger] = {}
    windows = s.feedback.windows()
    for _, value in read_all(s, s.topics.decisions):
        d = Decision.model_validate_json(value or b"")
        led = ledgers.setdefault(d.customer_id, CustomerLedger(customer_id=d.customer_id))
        record_decision(led, d, windows)
    for _, value in read_all(s, s.topics.milestones):
        m = Milestone.model_validate_json(value or b"")
        led = ledgers.setdefault(m.customer_id, CustomerLedger(customer_id=m.customer_id))
        record_milestone(led, m, windows)
    partitions = list(range(s.topics.partitions))

    def at(customer_id: str) -> datetime | None:
        if isinstance(watermark, datetime):
            return watermark
        return watermark.get(DefaultPartitioner()(customer_id.encode(), partitions, partitions))

    counted = tally(((led, at(cid)) for cid, led in ledgers.items()), windows)
    shares = holdout_shares(load_rulebook(s.rules_path))
    return experiment_report(counted, shares).model_dump(mode="json")


def headline(report: dict[str, Any]) -> dict[str, Any]:
    """Per rule: the matured and pending counts and the events of each measure."""
    return {
        r["rule_id"]: {
            "treated": r["treated"],
            "holdout": r["holdout"],
            "pending": (r["pending_treated"], r["pending_holdout"]),
            "events": {
                m: (v["treated_events"], v["holdout_events"]) for m, v in r["measures"].items()
            },
        }
        for r in report["rules"]
    }


def test_the_feedback_plane_counts_what_a_scoring_worker_decided(
    make_settings: Callable[..., Settings],
    start_worker: Callable[[Settings], Any],
    feedback: Callable[[Settings], FeedbackProcess],
    holdout_rules: Path,
) -> None:
    s = feedback_settings(make_settings, rules_path=holdout_rules)
    end = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)
    sim = JourneySimulator(250, seed=12, start=end - timedelta(days=3), span=timedelta(days=3))
    history = list(sim.events())
    produce(s, s.topics.customer_profiles, [(p.customer_id, encode(p)) for p in sim.profiles()])
    produce(s, s.topics.journey_events, [(e.customer_id, encode(e)) for e in history])
    start_worker(s)
    wait_committed(s, len(history), timeout=120)
    decisions = [Decision.model_validate_json(v or b"") for _, v in read_all(s, s.topics.decisions)]
    milestones = read_all(s, s.topics.milestones)
    actions = [
        OutreachAction.model_validate_json(v or b"") for _, v in read_all(s, s.topics.actions)
    ]
    arms = {d.arm for d in decisions}
    assert {"treated", "holdout"} <= arms and milestones and actions

    # the marketing tool reports back: every action delivered (twice: tools retry), half
    # opened; and three outcomes that cannot be counted
    outcomes = []
    for i, a in enumerate(actions):
        at = a.triggered_at + timedelta(minutes=1)
        kinds = ["delivered", "delivered"] + (["opened"] if i % 2 else [])
        outcomes += [
            (
                a.customer_id,
                encode(Outcome(action_id=a.action_id, customer_id=a.customer_id, kind=k, at=at)),
            )
            for k in kinds
        ]
    early = Outcome(
        action_id=actions[0].action_id,
        customer_id=actions[0].customer_id,
        kind="clicked",
        at=actions[0].triggered_at - timedelta(hours=1),
    )
    unknown = Outcome(
        action_id="no-such-action", customer_id=actions[0].customer_id, kind="delivered", at=end
    )
    bad = [
        ("c1", b"{not json"),
        (early.customer_id, encode(early)),
        (unknown.customer_id, encode(unknown)),
    ]
    produce(s, s.topics.outcomes, outcomes + bad)

    fb = feedback(s)
    wait_counted(fb, {"decisions": len(decisions), "milestones": len(milestones)}, 120)
    # the last day's windows are still open
    _, report = fb.get("/experiments")
    assert sum(r["pending_treated"] + r["pending_holdout"] for r in report["rules"]) > 0
    assert headline(report) == headline(expected_report(s, partition_watermarks(fb, s)))

    # time moves on: every window closes, and the API says what the pure ledger says
    later = end + timedelta(days=30)
    produce(s, s.topics.milestones, clock_records(s, later))
    wait_for_clock(fb, s, later)
    _, report = fb.get("/experiments")
    expected = expected_report(s, later)
    assert headline(report) == headline(expected)
    assert all(r["pending_treated"] == r["pending_holdout"] == 0 for r in report["rules"])
    assert sum(r["holdout"] for r in report["rules"]) > 0
    funnels = {r["rule_id"]: r["funnel"] for r in report["rules"]}
    per_rule = {rid: sum(a.rule_id == rid for a in actions) for rid in funnels}
    for rid, funnel in funnels.items():
        assert funnel["actions"] == per_rule[rid]
        assert funnel["outcomes"].get("delivered", 0) == per_rule[rid]  # once each
    opened = sum(f["outcomes"].get("opened", 0) for f in funnels.values())
    assert opened == len(actions) // 2

    letters = [
        DeadLetter.model_validate_json(v or b"") for _, v in read_all(s, s.topics.outcomes_dlq)
    ]
    assert sorted(d.error_type.value for d in letters) == [
        "malformed_json",
        "outcome_before_action",
        "unknown_action",
    ]

    # why: the customer's decisions as they were made
    someone = decisions[0].customer_id
    status, why = fb.get(f"/customers/{someone}")
    assert status == 200
    assert {d["decision_id"] for d in why["decisions"]} == {
        d.decision_id for d in decisions if d.customer_id == someone
    }
    assert fb.get("/customers/nobody-at-all")[0] == 404

    # the same for a person in a terminal
    cli = [sys.executable, "-m", "forewarn.cli"]
    shown = subprocess.run([*cli, "experiments", "--url", fb.url], capture_output=True,
                           text=True, timeout=60, check=True).stdout  # fmt: skip
    assert all(r["rule_id"] in shown for r in report["rules"])
    told = subprocess.run([*cli, "why", someone, "--url", fb.url], capture_output=True,
                          text=True, timeout=60, check=True).stdout  # fmt: skip
    assert f"customer {someone}" in told and decisions[0].rule_id in told
    missing = subprocess.run([*cli, "why", "nobody-at-all", "--url", fb.url],
                             capture_output=True, text=True, timeout=60, check=False)  # fmt: skip
    assert missing.returncode == 1 and "no record of customer" in missing.stderr

    # its metrics pass Prometheus's own check and never name a customer
    _, text = fb.get("/metrics")
    assert someone not in text
    promtool = shutil.which("promtool")
    if promtool is not None:
        check = subprocess.run([promtool, "check", "metrics"], input=text, text=True,
                               capture_output=True, timeout=30, check=False)  # fmt: skip
        assert check.returncode == 0, check.stdout + check.stderr

    # a restart recovers the tables; a replay of every decision counts nothing twice
    fb.stop()
    fb.start()
    _, again = fb.get("/experiments")
    assert again == report
    # (the restarted worker reads again what was read since its last commit: at least once)
    duplicates = stable(
        lambda: fb.metric("forewarn_feedback_records_total", source="decisions", result="duplicate")
    )
    produce(s, s.topics.decisions, [(d.customer_id, encode(d)) for d in decisions])
    wait_for(
        lambda: (
            fb.metric("forewarn_feedback_records_total", source="decisions", result="duplicate")
            == duplicates + len(decisions)
        ),
        60,
        "the replayed decisions were read",
        fb,
    )
    assert fb.get("/experiments")[1] == report


def stable(read: Callable[[], float], quiet: float = 3.0, timeout: float = 60) -> float:
    """A number once it has not changed for ``quiet`` seconds."""
    deadline = time.monotonic() + timeout
    last, since = read(), time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.5)
        now = read()
        if now != last:
            last, since = now, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return now
    raise AssertionError("the number kept changing")


def test_an_aborted_transaction_is_not_counted_twice(
    make_settings: Callable[..., Settings],
    feedback: Callable[[Settings], FeedbackProcess],
    holdout_rules: Path,
) -> None:
    """The scoring worker's batch aborts and is retried: the broker may show the aborted
    copy (the embedded one does, docs/decisions.md section 10); the decision counts once."""
    from tests.unit.test_experiments import decision

    s = feedback_settings(make_settings, rules_path=holdout_rules)
    fb = feedback(s)
    d = decision("cust-1", 0, rule="payment_recovery")
    p = Producer(
        kafka_config(s, "transactional_producer", **{"transactional.id": f"t-{uuid.uuid4()}"})
    )
    p.init_transactions(10)
    p.begin_transaction()
    p.produce(s.topics.decisions, key=b"cust-1", value=encode(d))
    p.flush(10)
    p.abort_transaction(10)
    p.begin_transaction()
    p.produce(s.topics.decisions, key=b"cust-1", value=encode(d))
    p.commit_transaction(10)
    # The clock moves only once the decision is in the customer's ledger: the intake agents run
    # side by side, and a decision arriving after the clock closed its window would be too
    # late to count (a race of the test, not of the plane's counting; seen once on CI).
    wait_for(lambda: fb.get("/customers/cust-1")[0] == 200, 60, "the decision arrived", fb)
    clock = datetime(2026, 4, 1, tzinfo=UTC)
    produce(s, s.topics.milestones, clock_records(s, clock))
    wait_for_clock(fb, s, clock)
    assert fb.get("/experiments")[1]["as_of"] == "2026-04-01T00:00:00Z"
    rules = fb.get("/experiments")[1]["rules"]
    assert [(r["rule_id"], r["treated"], r["holdout"]) for r in rules] == [
        ("payment_recovery", 1, 0)
    ]


def test_the_responding_simulator_closes_the_loop_through_the_feedback_plane(
    make_settings: Callable[..., Settings],
    start_worker: Callable[[Settings], Any],
    feedback: Callable[[Settings], FeedbackProcess],
    holdout_rules: Path,
) -> None:
    """``simulate --respond``: customers respond to the actions a live worker publishes and
    the simulated tool reports outcomes; the feedback plane counts every one of them."""
    from forewarn.streams.simulate import publish_live

    s = feedback_settings(make_settings, rules_path=holdout_rules)
    start_worker(s)
    fb = feedback(s)
    stats = publish_live(s, customers=300, rate=800, duration=12, seed=4, respond=True)
    assert stats.actions_received > 0 and stats.outcomes_reported >= stats.actions_received
    wait_committed(s, stats.events + sum(stats.bad.values()), timeout=120)
    decisions = read_all(s, s.topics.decisions)
    outcomes = read_all(s, s.topics.outcomes)
    assert len(outcomes) == stats.outcomes_reported
    milestones = read_all(s, s.topics.milestones)
    wait_counted(
        fb,
        {"decisions": len(decisions), "outcomes": len(outcomes), "milestones": len(milestones)},
        90,
    )
    _, report = fb.get("/experiments")
    funnel = {r["rule_id"]: r["funnel"] for r in report["rules"]}
    delivered_or_bounced = sum(
        f["outcomes"].get("delivered", 0) + f["outcomes"].get("bounced", 0) for f in funnel.values()
    )
    actions = read_all(s, s.topics.actions)
    # every action the simulator saw was reported delivered or bounced (it may have missed
    # the first actions while it joined: never more than were published)
    assert stats.actions_received <= len(actions)
    assert delivered_or_bounced == stats.actions_received
    assert headline(report) == headline(expected_report(s, partition_watermarks(fb, s)))


def test_two_feedback_workers_share_the_ledgers_and_either_answers_for_all(
    make_settings: Callable[..., Settings],
    feedback: Callable[[Settings], FeedbackProcess],
    holdout_rules: Path,
) -> None:
    from forewarn.offline.replay import replay
    from forewarn.streams.broker import free_port

    # a session long enough that a worker stopped below keeps its partitions meanwhile
    s = feedback_settings(make_settings, session_seconds=30, rules_path=holdout_rules)
    start = datetime(2026, 3, 1, tzinfo=UTC)
    sim = JourneySimulator(200, seed=6, start=start, span=timedelta(days=3))
    out = replay(list(sim.events()), sim.profiles(), rulebook=load_rulebook(holdout_rules))
    produce(s, s.topics.decisions, [(d.customer_id, encode(d)) for d in out.decisions])
    produce(s, s.topics.milestones, [(m.customer_id, encode(m)) for m in out.milestones])
    produce(s, s.topics.milestones, clock_records(s, start + timedelta(days=30)))
    first = feedback(s)
    second = feedback(s.model_copy(update={"feedback_http_port": free_port()}))
    expected = headline(expected_report(s, start + timedelta(days=30)))
    assert sum(r["holdout"] for r in expected.values()) > 0

    def both_agree() -> bool:
        answers = [fb.get("/experiments") for fb in (first, second)]
        return all(status == 200 and headline(body) == expected for status, body in answers)

    wait_for(both_agree, 120, "both workers report every ledger once", second)
    counted = sum(fb.metric("forewarn_feedback_ledgers") for fb in (first, second))
    assert 0 < first.metric("forewarn_feedback_ledgers") < counted  # the ledgers are shared
    # a customer's history is answered by whichever worker is asked
    for d in out.decisions[:: max(1, len(out.decisions) // 10)]:
        for fb in (first, second):
            status, why = fb.get(f"/customers/{d.customer_id}")
            assert status == 200 and d.decision_id in {x["decision_id"] for x in why["decisions"]}

    # a worker that does not answer (stopped, hung): the other still reports, without the
    # silent worker's customers, and says whose are missing
    assert second.proc is not None
    second.proc.send_signal(signal.SIGSTOP)
    try:
        status, body = first.get("/experiments")
        assert status == 200
        assert [u.rsplit(":", 1)[-1] for u in body["missing_workers"]] == [
            str(second.s.feedback_http_port)
        ]
        assert headline(body) != expected  # the second's customers are not counted
        assert "incomplete: 1 feedback worker(s)" in format_experiments(body)
        assert first.metric("forewarn_feedback_peer_failures_total") == 1
    finally:
        second.proc.send_signal(signal.SIGCONT)
