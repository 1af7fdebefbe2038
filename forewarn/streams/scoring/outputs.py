"""A batch's results as the Kafka records the worker produces, each one sure to fit.

Pure (no Kafka client): the worker hands the list to its producer inside the batch's
transaction. Every record is checked against the size limit of its topic before it is
produced, because one record the broker refuses fails the whole transaction, and a record
that fails every retry stops its partition for good:

- a dead letter keeps less of the original bytes until it fits (what was cut is listed in
  its ``truncated`` field with sizes and SHA-256);
- an action, a decision or a state record that does not fit (they are small by construction:
  bounded fields, whitelisted short attributes) becomes a ``too_large`` dead letter holding
  the start of the record, so the batch goes through and an operator sees it.

>>> from datetime import UTC, datetime
>>> from forewarn.pipeline.results import BatchResult
>>> topics = OutputTopics("actions", "decisions", "dlq", "state")
>>> batch_records(BatchResult.empty(), {0: {"c1": b"x" * 900}}, topics, Limits(1000),
...               datetime.now(UTC)).records[0].topic
'dlq'
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass, field
from datetime import datetime

from forewarn.models.contracts import DeadLetter, DeadLetterReason, Truncation
from forewarn.models.event_format import cloudevent_headers
from forewarn.pipeline.codecs import RawRecord, dead_letter, encode
from forewarn.pipeline.results import BatchResult

#: bytes Kafka adds around a record's key, value and headers (record and batch framing)
RECORD_OVERHEAD = 512
#: header on every changelog record: the partition's stream time after the batch
STREAM_TIME_HEADER = "forewarn-stream-time"

HeaderList = list[tuple[str, bytes]]


@dataclass(frozen=True, slots=True)
class OutputTopics:
    actions: str
    decisions: str
    dlq: str
    state: str
    milestones: str = "forewarn-milestones"
    feature_rows: str = "forewarn-feature-rows"
    #: partitions of the milestones and feature-rows topics: a record goes to the partition
    #: of its event, modulo these (None: the topics are missing, nothing is published there)
    learning_partitions: tuple[int, int] | None = None
    #: actions and decisions in CloudEvents binary mode (``FOREWARN_ACTIONS_FORMAT``)
    cloudevents: bool = False


@dataclass(slots=True)  # read-only by convention: frozen cost 0.5 µs more a record
class OutputRecord:
    topic: str
    key: bytes | None
    value: bytes | None
    #: set for changelog records (the partition that owns the customer); else by key
    partition: int | None = None
    headers: HeaderList | None = None

    @property
    def size(self) -> int:
        """Bytes as Kafka counts them against ``max.message.bytes`` (framing included)."""
        hs = sum(len(k) + len(v) for k, v in self.headers or ())
        return len(self.key or b"") + len(self.value or b"") + hs + RECORD_OVERHEAD


@dataclass(slots=True)
class Limits:
    """The largest record each topic takes (bytes). Learns from the broker's refusals."""

    default: int
    by_topic: dict[str, int] = field(default_factory=dict)

    def of(self, topic: str) -> int:
        return self.by_topic.get(topic, self.default)

    def refused(self, topic: str, size: int) -> None:
        """The broker refused a record of ``size`` bytes on ``topic``: aim lower next time."""
        self.by_topic[topic] = min(self.of(topic), max(4096, size * 3 // 4))


@dataclass(slots=True)
class BatchRecords:
    records: list[OutputRecord]
    #: outputs that did not fit and went to the DLQ instead (already in ``records``)
    oversized: int = 0


def fit_dead_letter(dl: DeadLetter, limit: int) -> bytes:
    """The dead letter's JSON, keeping less of the original bytes until it fits ``limit``."""
    value = encode(dl)
    keep = len(base64.b64decode(dl.value_base64 or ""))
    while len(value) + RECORD_OVERHEAD > limit and keep > 0:
        keep //= 2
        dl = _cut(dl, keep)
        value = encode(dl)
    if len(value) + RECORD_OVERHEAD > limit and dl.headers:  # many long header names
        names = "".join(h.key for h in dl.headers).encode()
        cut = Truncation(
            part="headers",
            original_bytes=len(names),
            kept_bytes=0,
            sha256=hashlib.sha256(names).hexdigest(),
        )
        dl = dl.model_copy(update={"headers": [], "truncated": [*dl.truncated, cut]})
        value = encode(dl)
    return value


def _cut(dl: DeadLetter, keep: int) -> DeadLetter:
    """``dl`` remade from its own bytes with ``keep`` bytes of value; earlier cuts are kept
    (they know the original sizes and SHA-256)."""
    rec = RawRecord(
        dl.source_topic,
        dl.partition,
        dl.offset,
        _unb64(dl.key_base64),
        _unb64(dl.value_base64),
        tuple((h.key, _unb64(h.value_base64)) for h in dl.headers),
    )
    again = dead_letter(rec, dl.error_type, dl.error_detail, dl.failed_at, keep)
    earlier = {t.part: t for t in dl.truncated}
    cuts = [earlier.pop(t.part, t).model_copy(update={"kept_bytes": t.kept_bytes})
            for t in again.truncated]  # fmt: skip
    return again.model_copy(
        update={"truncated": cuts + list(earlier.values()), "original_bytes": dl.original_bytes}
    )


def _unb64(text: str | None) -> bytes | None:
    return None if text is None else base64.b64decode(text)


def batch_records(
    result: BatchResult,
    states: dict[int, dict[str, bytes | None]],
    topics: OutputTopics,
    limits: Limits,
    now: datetime,
) -> BatchRecords:
    """Every record of the batch, in produce order: actions, decisions, milestones, feature
    rows, state, dead letters.

    ``states``: partition -> customer -> encoded state (None deletes it). An output that
    does not fit is replaced by a dead letter and counted in ``result``'s statistics.
    """
    out: list[OutputRecord] = []
    oversized: list[DeadLetter] = []

    def add(
        topic: str,
        key: bytes | None,
        value: bytes | None,
        partition: int | None = None,
        headers: HeaderList | None = None,
    ) -> bool:
        rec = OutputRecord(topic, key, value, partition, headers)
        if rec.size <= limits.of(topic):
            out.append(rec)
            return True
        raw = RawRecord(topic, -1 if partition is None else partition, -1, key, value)
        detail = (
            f"an output record for {topic} is {rec.size} bytes, above the limit of "
            f"{limits.of(topic)}; the start of it is kept here"
        )
        oversized.append(dead_letter(raw, DeadLetterReason.too_large, detail, now, 4096))
        return False

    ce = topics.cloudevents
    kept_actions = []
    for a in result.actions:
        h = cloudevent_headers("action", a.action_id, a.customer_id, a.decided_at) if ce else None
        if add(topics.actions, a.customer_id.encode(), encode(a), headers=h):
            kept_actions.append(a)
    kept_decisions = []
    for d in result.decisions:
        h = cloudevent_headers("decision", d.decision_id, d.customer_id, d.at) if ce else None
        if add(topics.decisions, d.customer_id.encode(), encode(d), headers=h):
            kept_decisions.append(d)
    result.actions, result.decisions = kept_actions, kept_decisions
    if topics.learning_partitions is not None:
        m, n = topics.learning_partitions
        milestones, rows = result.milestones, result.feature_rows
        for ms, p in zip(milestones.records, milestones.partitions, strict=True):
            add(topics.milestones, ms.customer_id.encode(), encode(ms), p % m)
        for r, p in zip(rows.records, rows.partitions, strict=True):
            add(topics.feature_rows, r.customer_id.encode(), encode(r), p % n)
    for partition, by_customer in states.items():
        st = result.stream_times.get(partition)
        headers = None if st is None else [(STREAM_TIME_HEADER, repr(st).encode())]
        for cid, value in by_customer.items():
            add(topics.state, cid.encode(), value, partition=partition, headers=headers)
    for dl in oversized:
        result.stats.dead_letters_by_reason[dl.error_type.value] += 1
    result.dead_letters += oversized
    limit = limits.of(topics.dlq)
    for dl in result.dead_letters:
        key = _unb64(dl.key_base64)
        out.append(OutputRecord(topics.dlq, key, fit_dead_letter(dl, limit - len(key or b""))))
    return BatchRecords(out, len(oversized))
