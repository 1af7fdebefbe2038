"""The feedback plane: a faust-streaming app that keeps every customer's ledger.

Three intake agents read the low-volume topics (decisions, outcomes, milestones), check
each record against its contract, and forward it keyed by customer to the plane's own
internal topic; bad records go to the outcomes' dead-letter topic with a typed reason. The
ledger agent reads that topic, so one worker owns a customer's whole history whatever
partitioner the producers used, and folds each record into the customer's ledger (a faust
table). Everything the API and metrics report is read off the ledgers.

Delivery is at least once (faust's exactly-once mode has open duplicate reports, design
section 9); counting stays exact because every update is idempotent on the record's own id
(``experiments.ledger``). The consumer reads committed data only (``_ReadCommitted``), and
since the embedded broker shows aborted transactions anyway (docs/decisions.md section 10),
the ids catch those too.
"""

from __future__ import annotations

import atexit
import json
import logging
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiokafka
import faust
from faust.transport.drivers import aiokafka as faust_aiokafka

from forewarn.experiments.ledger import (
    CustomerLedger,
    ExperimentWindows,
    orphan_deadline,
    record_decision,
    record_milestone,
    record_outcome,
    settle,
)
from forewarn.experiments.report import ExperimentTally, holdout_shares, tally
from forewarn.models.contracts import DeadLetterReason, Decision, Milestone, Outcome
from forewarn.pipeline.codecs import RawRecord, Rejected, dead_letter, decode_contract, encode
from forewarn.rules.rulebook import load_rulebook
from forewarn.streams.metrics import FeedbackMetrics
from forewarn.streams.settings import Settings, faust_config

log = logging.getLogger(__name__)

#: what each intake topic carries, by the one-letter kind the internal topic uses
CONTRACTS: dict[bytes, type[Decision] | type[Outcome] | type[Milestone]] = {
    b"d": Decision,
    b"o": Outcome,
    b"m": Milestone,
}
SOURCES = {b"d": "decisions", b"o": "outcomes", b"m": "milestones"}


class _ReadCommittedThread(faust_aiokafka.AIOKafkaConsumerThread):
    """faust reads ``read_uncommitted`` unless its exactly-once mode is on; the feedback
    plane wants committed data with at-least-once processing, which aiokafka allows."""

    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        consumer._isolation_level = "read_committed"  # read by aiokafka's start()
        return consumer

    async def _highwaters(self, partitions: list[Any]) -> Any:
        """Where each changelog partition ends, for the table recovery to read up to.

        The embedded broker answers the end-offset query with its last record batch's base
        offset plus one (docs/decisions.md section 16): a recovery that believed it would
        stop early and forget what the last batch held. A fetch's high watermark is right
        everywhere, so one fetch near the reported end confirms it (on a real Kafka it
        changes nothing).
        """
        reported = dict(await super()._highwaters(partitions))
        transport: Any = self.transport
        conf = self.app.conf
        probe = aiokafka.AIOKafkaConsumer(
            bootstrap_servers=faust_aiokafka.server_list(transport.url, transport.default_port),
            enable_auto_commit=False,
            isolation_level="read_committed",
            **faust_aiokafka.credentials_to_aiokafka_auth(
                conf.broker_credentials, conf.ssl_context
            ),
        )
        await probe.start()
        try:
            probe.assign(list(partitions))
            for tp in partitions:
                probe.seek(tp, max(0, (reported.get(tp) or 0) - 1))
            pending = set(partitions)
            for _ in range(20):  # at most ~10 s
                if not pending:
                    break
                await probe.getmany(timeout_ms=500)
                for tp in list(pending):
                    high = probe.highwater(tp)
                    if high is not None:
                        reported[tp] = max(reported.get(tp) or 0, high)
                        pending.discard(tp)
        finally:
            await probe.stop()
        return reported


class _ReadCommittedConsumer(faust_aiokafka.Consumer):
    def _new_consumer_thread(self) -> _ReadCommittedThread:
        return _ReadCommittedThread(self, loop=self.loop, beacon=self.beacon)


class _Transport(faust_aiokafka.Transport):
    Consumer = _ReadCommittedConsumer


class _App(faust.App):
    def _new_transport(self) -> Any:
        return _Transport(self.conf.broker_consumer, self, loop=self.loop)


def envelope(kind: bytes, rec: RawRecord) -> bytes:
    """The internal topic's record: the kind, where it came from, and the original bytes."""
    origin = json.dumps([rec.topic, rec.partition, rec.offset]).encode()
    return kind + origin + b"\n" + (rec.value or b"")


def open_envelope(value: bytes) -> tuple[bytes, RawRecord]:
    kind, rest = value[:1], value[1:]
    origin, _, payload = rest.partition(b"\n")
    topic, partition, offset = json.loads(origin)
    return kind, RawRecord(topic, partition, offset, None, payload)


def record_time(record: Decision | Outcome | Milestone) -> datetime:
    """A record's time (the trigger's time for a decision); decisions and milestones move
    their partition's stream time."""
    if isinstance(record, Decision):
        return record.action.triggered_at
    if isinstance(record, Outcome):
        return record.at
    return record.occurred_at


@dataclass
class FeedbackApp:
    """The faust app with its topics, tables and agents, built from the settings."""

    settings: Settings
    app: faust.App
    windows: ExperimentWindows
    metrics: FeedbackMetrics
    holdout_shares: dict[str, float]
    ledgers: Any
    watermarks: Any
    dead_letters: Any
    ledger_input: Any

    # ---- the ledger partitions' stream time ---------------------------------------------
    # Kept in the ``watermarks`` table, written from the partition it describes: "<p>":
    # the latest record time; "<p>:orphans": the customers holding outcomes that wait for
    # their decision, with the earliest deadline of each.

    def _time(self, key: str) -> datetime | None:
        raw = self.watermarks.get(key.encode())
        return None if raw is None else datetime.fromtimestamp(float(raw), UTC)

    def _advance(self, key: str, at: datetime) -> datetime:
        before = self._time(key)
        if before is not None and before >= at:
            return before
        self.watermarks[key.encode()] = repr(at.timestamp()).encode()
        return at

    def watermark(self, partition: int) -> datetime | None:
        return self._time(str(partition))

    def owned_partitions(self) -> set[int] | None:
        """The ledger partitions this worker owns now (None: every one it holds, for an app
        that is not running, as in tests). faust keeps the table entries of a partition that
        moved to another worker; they must not be counted here too."""
        if not self.app.started:
            return None
        topic = self.ledgers.changelog_topic.get_topic_name()
        return {tp.partition for tp in self.app.assignor.assigned_actives() if tp.topic == topic}

    def local_ledgers(self) -> Iterator[tuple[CustomerLedger, datetime | None]]:
        """The ledgers this worker owns, each with its partition's watermark."""
        owned = self.owned_partitions()
        for _key, raw in list(self.ledgers.items()):
            partition, ledger = decode_ledger(raw)
            if owned is None or partition in owned:
                yield ledger, self.watermark(partition)

    def local_tally(self) -> ExperimentTally:
        return tally(self.local_ledgers(), self.windows)

    def ledger_of(self, customer_id: str) -> tuple[CustomerLedger, datetime | None] | None:
        raw = self.ledgers.get(customer_id.encode())
        if raw is None:
            return None
        partition, ledger = decode_ledger(raw)
        return ledger, self.watermark(partition)

    # ---- what the ledger agent does with one record ------------------------------------

    async def apply(self, value: bytes, partition: int) -> None:
        kind, rec = open_envelope(value)
        source = SOURCES.get(kind, "unknown")
        try:
            record = decode_contract(rec, CONTRACTS[kind])
        except (Rejected, KeyError) as e:  # the intake checked it: only a foreign writer
            reason = e.reason if isinstance(e, Rejected) else DeadLetterReason.schema_violation
            await self.refuse(rec, reason, str(e))
            self.metrics.records.labels(source, "dead_letter").inc()
            return
        cid = record.customer_id
        raw = self.ledgers.get(cid.encode())
        ledger = CustomerLedger(customer_id=cid) if raw is None else decode_ledger(raw)[1]
        if isinstance(record, Decision):
            changed = record_decision(ledger, record, self.windows)
        elif isinstance(record, Milestone):
            changed = record_milestone(ledger, record, self.windows)
        else:
            mark = ledger.actions.get(record.action_id)
            changed = mark is None or record.kind not in mark.outcomes
            problem = record_outcome(ledger, record, self.windows)
            if problem is not None:
                await self.refuse(rec, DeadLetterReason(problem.value), problem.value)
                self.metrics.records.labels(source, "dead_letter").inc()
                return
        p = str(partition)
        # stream time is what the scoring workers saw; a tool's clock does not move it (a
        # tool reporting in wall time during a backfill would close every window at once)
        before = self.watermark(partition)
        if isinstance(record, Outcome):
            watermark = before or record_time(record)
        else:
            watermark = self._advance(p, record_time(record))
        self.metrics.watermark.labels(p).set(watermark.timestamp())
        await self._settle(cid, ledger, partition, watermark)
        waiting = self._orphaned(p)
        if waiting and min(waiting.values()) <= watermark.timestamp():
            # outcomes whose decision never came are refused once their deadline passes,
            # whether or not their customer is heard of again
            for other, deadline in waiting.items():
                found = self.ledger_of(other)
                if deadline <= watermark.timestamp() and found is not None and other != cid:
                    await self._settle(other, found[0], partition, watermark)
        self.metrics.records.labels(source, "counted" if changed else "duplicate").inc()

    def _orphaned(self, p: str) -> dict[str, float]:
        """The partition's customers holding outcomes that wait for their decision, with
        the earliest deadline of each."""
        raw = self.watermarks.get(f"{p}:orphans".encode())
        return dict(json.loads(raw)) if raw else {}

    async def _settle(
        self, cid: str, ledger: CustomerLedger, partition: int, watermark: datetime
    ) -> None:
        for outcome, why in settle(ledger, watermark, self.windows):
            orphan = RawRecord(self.settings.topics.outcomes, -1, -1, None, encode(outcome))
            await self.refuse(orphan, DeadLetterReason(why.value), why.value)
            self.metrics.records.labels("outcomes", "dead_letter").inc()
        self.ledgers[cid.encode()] = encode_ledger(partition, ledger)
        p = str(partition)
        waiting = self._orphaned(p)
        before = dict(waiting)
        waiting.pop(cid, None)
        if ledger.orphans:
            first = min(orphan_deadline(o, self.windows) for o in ledger.orphans)
            waiting[cid] = first.timestamp()
        if waiting != before:
            self.watermarks[f"{p}:orphans".encode()] = json.dumps(sorted(waiting.items())).encode()

    async def refuse(self, rec: RawRecord, reason: DeadLetterReason, detail: str) -> None:
        letter = dead_letter(rec, reason, detail, datetime.now(UTC))
        await self.dead_letters.send(key=rec.key, value=encode(letter))
        self.metrics.dead_letters.labels(reason.value).inc()


def encode_ledger(partition: int, ledger: CustomerLedger) -> bytes:
    return str(partition).encode() + b"\n" + ledger.model_dump_json().encode()


def decode_ledger(raw: bytes) -> tuple[int, CustomerLedger]:
    partition, _, body = raw.partition(b"\n")
    return int(partition), CustomerLedger.model_validate_json(body)


def _data_dir(settings: Settings) -> Path:
    """Where faust keeps its tables: RocksDB under ``FOREWARN_STATE_DIR``; without one,
    faust still makes a directory (in the working directory unless told), so a temporary
    one, removed at exit."""
    if settings.state_dir is not None:
        datadir = settings.state_dir / "feedback"
        datadir.mkdir(parents=True, exist_ok=True)
        return datadir
    datadir = Path(tempfile.mkdtemp(prefix="forewarn-feedback-"))
    atexit.register(shutil.rmtree, datadir, ignore_errors=True)
    return datadir


def build_feedback_app(settings: Settings, *, store: str | None = None) -> FeedbackApp:
    """The feedback plane for these settings. ``store``: faust's table store; RocksDB
    under ``FOREWARN_STATE_DIR`` when it is set, memory otherwise."""
    topics = settings.topics
    app = _App(
        settings.feedback.group_id,
        store=store or ("rocksdb://" if settings.state_dir else "memory://"),
        datadir=str(_data_dir(settings)),
        # a standby copy would be counted as the worker's own in the report's scan
        table_standby_replicas=0,
        consumer_auto_offset_reset="earliest",
        web_enabled=True,
        **faust_config(settings),
    )
    raw: dict[str, Any] = {"key_serializer": "raw", "value_serializer": "raw"}
    # bytes in and out (keys too: the router hashes a key as the ledger input's producer did)
    table: dict[str, Any] = {"key_type": bytes, "value_type": bytes,
                             "partitions": topics.partitions}  # fmt: skip
    plane = FeedbackApp(
        settings=settings,
        app=app,
        windows=settings.feedback.windows(),
        metrics=FeedbackMetrics(),
        holdout_shares=holdout_shares(load_rulebook(settings.rules_path)),
        ledgers=app.Table("ledgers", **table),
        watermarks=app.Table("watermarks", **table),
        dead_letters=app.topic(topics.outcomes_dlq, **raw),
        ledger_input=app.topic(
            topics.feedback, key_type=str, internal=True, partitions=topics.partitions, **raw
        ),
    )
    for kind, name in ((b"d", topics.decisions), (b"o", topics.outcomes),
                       (b"m", topics.milestones)):  # fmt: skip
        _add_intake(plane, kind, app.topic(name, **raw))

    async def ledger_agent(stream: Any) -> None:
        async for event in stream.events():
            await plane.apply(event.value, event.message.partition)

    app.agent(plane.ledger_input, name="forewarn.feedback.ledger")(ledger_agent)

    from forewarn.streams.feedback.views import add_views

    add_views(plane)
    return plane


def _add_intake(plane: FeedbackApp, kind: bytes, topic: Any) -> None:
    """An agent that checks one source's records and forwards them, keyed by customer, to
    the ledger input; what fails its contract goes to the dead letters."""
    contract, source = CONTRACTS[kind], SOURCES[kind]

    async def agent(stream: Any) -> None:
        async for event in stream.events():
            msg = event.message
            rec = RawRecord(msg.topic, msg.partition, msg.offset, msg.key, event.value)
            try:
                record = decode_contract(rec, contract)
            except Rejected as e:
                await plane.refuse(rec, e.reason, e.detail)
                plane.metrics.records.labels(source, "dead_letter").inc()
                continue
            await plane.ledger_input.send(key=record.customer_id, value=envelope(kind, rec))

    plane.app.agent(topic, name=f"forewarn.feedback.intake_{source}")(agent)
