"""The feedback plane's sustained rate, for ``make bench`` (``bench/run.py --only feedback``
runs this step alone).

The load is what the scoring worker would publish for the bench's own journey history,
replayed offline (``forewarn.offline.replay``) under the shipped rulebook with a 10% global
holdout, so the decisions carry arms. One replay gives too few decisions for a sustained
measurement (about 6 per 1,000 events), so its decisions and milestones are copied for
renamed customers (``<id>~<copy>``) until there are about as many decisions as asked for:
every copy is as realistic as the first, stream time stays within the history's span, and
the mix of decisions and milestones stays the workload's. A simulated tool reports about as
many outcomes as there are decisions: every emitted action delivered, a share of them
opened.

Everything is published before ``forewarn feedback`` starts (a subprocess, settings from
``FOREWARN_*``); the rate is measured from the moment it is ready to the moment its
``/metrics`` counts every published record. Each scrape of ``/metrics`` stops the plane for
a time that grows with its ledgers (see ``Counting``): the rate is over the plane's own time
between scrapes, and the scrapes are spaced out in the middle of the run.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from confluent_kafka import Producer
from prometheus_client.parser import text_string_to_metric_families

from forewarn.models.contracts import (
    CustomerProfile,
    Decision,
    DecisionStatus,
    JourneyEvent,
    Milestone,
    Outcome,
    OutcomeKind,
)
from forewarn.offline.replay import replay
from forewarn.pipeline.codecs import encode
from forewarn.rules.rulebook import default_rulebook_path, load_rulebook_text
from forewarn.streams.broker import free_port
from forewarn.streams.settings import FeedbackConfig, Settings, kafka_config
from forewarn.streams.simulate import produce_record

HOLDOUT_PERCENT = 10
SOURCES = ("decisions", "outcomes", "milestones")
#: the shortest and longest wait between two scrapes of /metrics
POLL_SECONDS = 0.25
POLL_MAX_SECONDS = 5.0


def holdout_rulebook_text() -> str:
    """The shipped rulebook with a global holdout, added after its ``version:`` line."""
    lines = default_rulebook_path().read_text().splitlines(keepends=True)
    at = next(i for i, line in enumerate(lines) if line.startswith("version:"))
    lines.insert(at + 1, f"holdout_percent: {HOLDOUT_PERCENT}\n")
    return "".join(lines)


@dataclass(frozen=True)
class FeedbackLoad:
    """What the feedback plane reads, and the journey history one copy of it came from."""

    decisions: list[Decision]
    outcomes: list[Outcome]
    milestones: list[Milestone]
    #: journey events replayed for one copy, and how many copies there are
    events: int
    copies: int

    @property
    def records(self) -> int:
        return len(self.decisions) + len(self.outcomes) + len(self.milestones)

    def per_event(self, records: Sequence[object]) -> float:
        return len(records) / (self.events * self.copies)


def _renamed(customer_id: str, copy: int) -> str:
    return f"{customer_id}~{copy}"


def _copy_decision(d: Decision, copy: int) -> Decision:
    cid = _renamed(d.customer_id, copy)
    action = d.action.model_copy(
        update={"action_id": f"{d.action.action_id}~{copy}", "customer_id": cid}
    )
    update = {"decision_id": f"{d.decision_id}~{copy}", "customer_id": cid, "action": action}
    return d.model_copy(update=update)


def _copy_milestone(m: Milestone, copy: int) -> Milestone:
    update = {"event_id": f"{m.event_id}~{copy}", "customer_id": _renamed(m.customer_id, copy)}
    return m.model_copy(update=update)


def tool_outcomes(decisions: Sequence[Decision]) -> list[Outcome]:
    """About one outcome per decision, in time order: every emitted action delivered a minute
    after its trigger, and a share of them opened half an hour after it."""
    emitted = [d.action for d in decisions if d.status is DecisionStatus.emitted]
    extra = len(decisions) - len(emitted)  # opened ones that make up the difference
    out: list[Outcome] = []
    for i, a in enumerate(emitted):
        kinds = [(OutcomeKind.delivered, 1)]
        if (i * extra) % max(1, len(emitted)) < extra:
            kinds.append((OutcomeKind.opened, 30))
        for kind, minutes in kinds:
            at = a.triggered_at + timedelta(minutes=minutes)
            out.append(Outcome(action_id=a.action_id, customer_id=a.customer_id, kind=kind, at=at))
    return sorted(out, key=lambda o: o.at)


def feedback_load(
    events: Sequence[JourneyEvent], profiles: Sequence[CustomerProfile], decisions: int
) -> FeedbackLoad:
    """About ``decisions`` decisions (whole copies of the replay), their outcomes and the
    milestones of the same history."""
    book = load_rulebook_text(holdout_rulebook_text(), "bench-holdout.yaml")
    once = replay(events, profiles, rulebook=book)
    copies = max(1, round(decisions / max(1, len(once.decisions))))
    ds = sorted(
        (_copy_decision(d, k) for k in range(copies) for d in once.decisions),
        key=lambda d: d.action.triggered_at,
    )
    ms = sorted(
        (_copy_milestone(m, k) for k in range(copies) for m in once.milestones),
        key=lambda m: m.occurred_at,
    )
    return FeedbackLoad(ds, tool_outcomes(ds), ms, once.events, copies)


def publish_load(settings: Settings, load: FeedbackLoad) -> None:
    """Every record to its topic, keyed by customer, as the worker and the tool would."""
    producer = Producer(kafka_config(settings, "producer", **{"linger.ms": 20}))
    topics = settings.topics
    batches: list[tuple[str, Sequence[Decision | Outcome | Milestone]]] = [
        (topics.decisions, load.decisions),
        (topics.outcomes, load.outcomes),
        (topics.milestones, load.milestones),
    ]
    for topic, records in batches:
        for r in records:
            produce_record(producer, topic, r.customer_id.encode(), encode(r))
    if producer.flush(60):
        raise RuntimeError("the feedback load was not all published")


def feedback_settings(settings: Settings) -> Settings:
    """The bench settings with a feedback group of their own, a free port, fast joins."""
    return settings.model_copy(
        update={
            "feedback": FeedbackConfig(
                group_id=f"{settings.group_id}-feedback", session_timeout_seconds=6
            ),
            "feedback_http_port": free_port(),
        }
    )


def feedback_env(s: Settings, rules: Path) -> dict[str, str]:
    """The environment that gives ``forewarn feedback`` the settings ``s``."""
    env = {
        **os.environ,
        "FOREWARN_BOOTSTRAP_SERVERS": s.bootstrap_servers,
        "FOREWARN_GROUP_ID": s.group_id,
        "FOREWARN_RULES_PATH": str(rules),
        "FOREWARN_FEEDBACK__GROUP_ID": s.feedback.group_id,
        "FOREWARN_FEEDBACK__SESSION_TIMEOUT_SECONDS": str(s.feedback.session_timeout_seconds),
        "FOREWARN_FEEDBACK_HTTP_PORT": str(s.feedback_http_port),
        "FOREWARN_HTTP_PORT": "0",
        "FOREWARN_TOPICS__PARTITIONS": str(s.topics.partitions),
    }
    for name, topic in s.topics.model_dump().items():
        if isinstance(topic, str):
            env[f"FOREWARN_TOPICS__{name.upper()}"] = topic
    env.pop("FOREWARN_STATE_DIR", None)  # tables in memory: the bench measures the stream
    return env


@contextmanager
def feedback_process(env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """``forewarn feedback`` running, its output in ``log``; SIGTERM (then a kill after 30 s)
    when the block ends, however it ends."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "forewarn.cli", "feedback"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read().decode()
    except OSError:  # refused, not ready (503), timed out
        return 0, ""


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float) -> float:
    """Seconds until ``/readyz`` answers 200."""
    t = time.perf_counter()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if _get(url + "/readyz")[0] == 200:
            return time.perf_counter() - t
        time.sleep(POLL_SECONDS)
    raise RuntimeError(f"the feedback plane was not ready within {timeout:.0f} s")


@dataclass(frozen=True)
class Scrape:
    """One read of the plane's ``/metrics``: ``forewarn_feedback_records_total`` by
    ``source/result``, the ledgers it holds, and when the request went and came back."""

    counted: dict[str, float]
    ledgers: float
    sent: float
    back: float

    @property
    def read(self) -> float:
        """Records of the three sources read, whatever became of them."""
        return sum(v for k, v in self.counted.items() if k.split("/")[0] in SOURCES)


def scrape(url: str) -> Scrape:
    sent = time.perf_counter()
    _, text = _get(url + "/metrics")
    back = time.perf_counter()
    counted: dict[str, float] = {}
    ledgers = 0.0
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == "forewarn_feedback_records_total":
                counted[f"{s.labels['source']}/{s.labels['result']}"] = s.value
            elif s.name == "forewarn_feedback_ledgers":
                ledgers = s.value
    return Scrape(counted, ledgers, sent, back)


@dataclass(frozen=True)
class Counting:
    """Every scrape from the one right after the plane is ready to the first that saw every
    record counted.

    The plane starts on the backlog as soon as it is ready, and its intake agents forward
    records to the ledger topic for a while before the ledger agent counts the first (the
    bigger the backlog, the longer): the time runs from ready, not from the first record
    counted. A scrape stops the plane: ``/metrics`` folds every ledger into the experiment
    gauges in its event loop (a cost that grows with the ledgers), so only the time between
    the scrapes (from one's answer to the next one's request) is the plane's own."""

    scrapes: list[Scrape]

    @property
    def own_seconds(self) -> float:
        pairs = zip(self.scrapes, self.scrapes[1:], strict=False)
        return sum(later.sent - earlier.back for earlier, later in pairs)

    @property
    def wall_seconds(self) -> float:
        return self.scrapes[-1].sent - self.scrapes[0].back

    @property
    def records(self) -> float:
        return self.scrapes[-1].read - self.scrapes[0].read

    @property
    def first_counted_seconds(self) -> float:
        """From ready to the first scrape that saw a record counted."""
        return next(s.back for s in self.scrapes if s.read) - self.scrapes[0].back

    @property
    def last_scrape_seconds(self) -> float:
        return self.scrapes[-1].back - self.scrapes[-1].sent


def next_poll(scrapes: list[Scrape], expected: int) -> float:
    """Seconds to the next scrape: every ``POLL_SECONDS`` until a record is counted and
    near the end; in between, half the time the rest should take (each scrape stops the
    plane, so fewer of them keep the step short)."""
    so_far = Counting(scrapes)
    if so_far.records <= 0 or so_far.own_seconds <= 0:
        return POLL_SECONDS
    rest = (expected - scrapes[-1].read) / (so_far.records / so_far.own_seconds)
    return min(POLL_MAX_SECONDS, max(POLL_SECONDS, rest / 2))


def count_all(url: str, proc: subprocess.Popen[bytes], expected: int, timeout: float) -> Counting:
    """Scrapes ``/metrics`` from now (the plane ready) until ``expected`` records are
    counted."""
    scrapes: list[Scrape] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        scrapes.append(scrape(url))
        if scrapes[-1].read >= expected:
            counting = Counting(scrapes)
            if counting.own_seconds < 1:
                raise RuntimeError(f"{expected:,} records were counted too fast to time")
            return counting
        time.sleep(next_poll(scrapes, expected))
    seen = scrapes[-1].read if scrapes else 0
    raise RuntimeError(f"the feedback plane counted {seen:,.0f} of {expected:,} records")


@dataclass(frozen=True)
class FeedbackRun:
    load: FeedbackLoad
    counting: Counting
    #: process start to ready
    startup: float
    #: ERROR lines and tracebacks in the plane's log, and the log (kept only when there are)
    problems: list[str]
    log: Path

    @property
    def records_per_second(self) -> float:
        """Records counted per second of the plane's own time (scrapes left out)."""
        return self.counting.records / self.counting.own_seconds

    @property
    def paired_per_second(self) -> float:
        """The decisions and outcomes among them."""
        load = self.load
        return self.records_per_second * (len(load.decisions) + len(load.outcomes)) / load.records

    @property
    def counted(self) -> dict[str, float]:
        return self.counting.scrapes[-1].counted


def log_problems(log: Path) -> list[str]:
    lines = log.read_text(errors="replace").splitlines()
    return [line for line in lines if "ERROR" in line or line.startswith("Traceback")]


def run_feedback(settings: Settings, load: FeedbackLoad, timeout: float = 300) -> FeedbackRun:
    """Publish the load, start the feedback plane, and time how fast it counts it all."""
    s = feedback_settings(settings)
    publish_load(s, load)
    workdir = Path(tempfile.mkdtemp(prefix="forewarn-bench-feedback-"))
    rules, log = workdir / "rulebook.yaml", workdir / "feedback.log"
    rules.write_text(holdout_rulebook_text())
    url = f"http://127.0.0.1:{s.feedback_http_port}"
    try:
        with feedback_process(feedback_env(s, rules), log) as proc:
            startup = wait_ready(url, proc, timeout=120)
            counting = count_all(url, proc, load.records, timeout)
    except RuntimeError as e:
        tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
        raise RuntimeError(f"{e}; its log ({log}) ends:\n{tail}") from e
    problems = log_problems(log)
    if not problems:
        shutil.rmtree(workdir)
    return FeedbackRun(load, counting, startup, problems, log)


@dataclass(frozen=True)
class JourneyMix:
    """What the scoring side publishes per journey event, and how fast one worker scores."""

    decisions_per_event: float
    milestones_per_event: float
    #: None when the scoring worker did not run (``--only feedback``)
    worker_events_per_second: float | None
    measured_by: str


def rate_lines(run: FeedbackRun) -> list[str]:
    load, c = run.load, run.counting
    return [
        f"feedback plane: {run.records_per_second:,.0f} records/s sustained, of which "
        f"{run.paired_per_second:,.0f} decisions+outcomes/s ({len(load.decisions):,} decisions, "
        f"{len(load.outcomes):,} outcomes and {len(load.milestones):,} milestones)",
        f"  ready {run.startup:.1f} s after it started; all counted in {c.own_seconds:.1f} s "
        f"of its own time (the first {c.first_counted_seconds:.1f} s after ready), "
        f"{c.wall_seconds:.1f} s with the {len(c.scrapes)} /metrics scrapes that stopped it "
        f"(the last: {c.last_scrape_seconds:.2f} s for {c.scrapes[-1].ledgers:,.0f} ledgers)",
    ]


def followed(run: FeedbackRun, mix: JourneyMix) -> float:
    """Journey events per second whose decisions and outcomes one feedback worker keeps up
    with: its decisions+outcomes per second (milestones beside them in the workload's
    proportion) over the decisions+outcomes one journey event brings."""
    return run.paired_per_second / (2 * mix.decisions_per_event)


def follow_lines(run: FeedbackRun, mix: JourneyMix) -> list[str]:
    d, m, worker = mix.decisions_per_event, mix.milestones_per_event, mix.worker_events_per_second
    events = followed(run, mix)
    compared = (
        "(the scoring worker did not run: --only feedback)"
        if worker is None
        else f"= {events / worker:.2f}x the {worker:,.0f} events/s the scoring worker "
        "(exactly-once) scored in this run"
    )
    return [
        f"  per journey event ({mix.measured_by}): {d:.4f} decisions and, assuming one "
        f"outcome per decision, {2 * d:.4f} decisions+outcomes (the plane also reads "
        f"{m:.4f} milestones per event; the load has them in that proportion)",
        f"  journey events one feedback worker can follow: {run.paired_per_second:,.0f} "
        f"decisions+outcomes/s / {2 * d:.4f} = {events:,.0f} events/s {compared}",
    ]


def feedback_numbers(run: FeedbackRun, mix: JourneyMix) -> dict[str, object]:
    load, c, worker = run.load, run.counting, mix.worker_events_per_second
    numbers: dict[str, object] = {
        "decisions": len(load.decisions),
        "outcomes": len(load.outcomes),
        "milestones": len(load.milestones),
        "records_per_second": round(run.records_per_second),
        "decisions_outcomes_per_second": round(run.paired_per_second),
        "seconds": round(c.own_seconds, 2),
        "seconds_with_scrapes": round(c.wall_seconds, 2),
        "scrapes": len(c.scrapes),
        "last_scrape_seconds": round(c.last_scrape_seconds, 3),
        "ledgers": int(c.scrapes[-1].ledgers),
        "startup_seconds": round(run.startup, 1),
        "ready_to_first_counted_seconds": round(c.first_counted_seconds, 1),
        "counted": {k: int(v) for k, v in sorted(run.counted.items())},
        "decisions_per_journey_event": round(mix.decisions_per_event, 5),
        "assumed_outcomes_per_decision": 1.0,
        "milestones_per_journey_event": round(mix.milestones_per_event, 5),
        "per_journey_event_measured_by": mix.measured_by,
        "journey_events_per_second_followed": round(followed(run, mix)),
        "log_problems": len(run.problems),
    }
    if worker is not None:
        numbers["followed_to_scoring_worker"] = round(followed(run, mix) / worker, 3)
    return numbers


def feedback_summary(run: FeedbackRun, mix: JourneyMix) -> tuple[str, dict[str, object]]:
    """The lines ``make bench`` prints, and the numbers it writes, for the feedback plane.

    Outcomes per journey event are assumed equal to decisions per journey event (every
    decision answered once; the load published here has about as many)."""
    lines = rate_lines(run) + follow_lines(run, mix)
    return "\n".join(lines), feedback_numbers(run, mix)
