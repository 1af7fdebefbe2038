"""Pretty-print Forewarn's output topics for people: ``forewarn tail actions|decisions|dlq``."""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Literal

from confluent_kafka import OFFSET_BEGINNING, OFFSET_END, Consumer, KafkaError, TopicPartition

from forewarn.models.contracts import DeadLetter, Decision, OutreachAction
from forewarn.streams.settings import Settings, kafka_config
from forewarn.streams.topics import reach, require

Which = Literal["actions", "decisions", "dlq"]


def format_action(a: OutreachAction) -> str:
    why = "; ".join(r.detail for r in a.reasons)
    when = a.triggered_at.isoformat(timespec="seconds")
    # the rulebook's words: transactional messages are exempt from the contact budget
    kind = "transactional" if a.transactional else "marketing"
    return (
        f"{when}  {a.customer_id}  {a.rule_id} -> {a.channel.value} "
        f"(priority {a.priority}, {kind}, friction {a.scores.friction:.0f})\n"
        f"    why: {why}"
    )


def format_decision(d: Decision) -> str:
    a = d.action
    if d.suppressed_by is None:
        verdict = f"{d.status.value} via {a.channel.value}"
    else:
        verdict = f"suppressed by {d.suppressed_by.value}: {d.detail}"
    return (
        f"{a.triggered_at.isoformat(timespec='seconds')}  {d.customer_id}  {d.rule_id}  {verdict}"
    )


def format_dead_letter(dl: DeadLetter) -> str:
    raw = base64.b64decode(dl.value_base64) if dl.value_base64 else b""
    preview = raw[:80].decode("utf-8", errors="replace").replace("\n", " ")
    return (
        f"{dl.failed_at.isoformat(timespec='seconds')}  "
        f"{dl.source_topic}[{dl.partition}]@{dl.offset}  "
        f"{dl.error_type.value}: {dl.error_detail[:160]}\n    value: {preview!r}"
    )


_FORMATS: dict[Which, tuple[Callable[[Settings], str], Callable[[bytes], str]]] = {
    "actions": (
        lambda s: s.topics.actions,
        lambda v: format_action(OutreachAction.model_validate_json(v)),
    ),
    "decisions": (
        lambda s: s.topics.decisions,
        lambda v: format_decision(Decision.model_validate_json(v)),
    ),
    "dlq": (
        lambda s: s.topics.dlq,
        lambda v: format_dead_letter(DeadLetter.model_validate_json(v)),
    ),
}


def tail(
    settings: Settings,
    which: Which,
    *,
    from_beginning: bool = False,
    limit: int | None = None,
    idle_timeout: float | None = None,
    as_json: bool = False,
) -> Iterator[str]:
    """Lines for each record of the topic (read_committed); stops after ``limit`` records
    or ``idle_timeout`` seconds without one.

    No consumer group: the topic's partitions are assigned at their start (or end), so the
    records already there show at once, and the idle timer starts only when they are
    assigned. ``KafkaUnreachable`` when no broker answers, ``TopicMissing`` when the topic
    is not there.
    """
    topic_of, fmt = _FORMATS[which]
    topic = topic_of(settings)
    existing = reach(settings)
    require(settings, existing, [topic])
    partitions = existing[topic]
    consumer = Consumer(
        kafka_config(
            settings,
            "consumer",
            **{
                # never joins: assigned partitions, nothing committed; librdkafka wants a name
                "group.id": f"forewarn-tail-{uuid.uuid4().hex[:8]}",
                "enable.partition.eof": False,
            },
        )
    )
    start = OFFSET_BEGINNING if from_beginning else OFFSET_END
    consumer.assign([TopicPartition(topic, p, start) for p in range(partitions)])
    seen = 0
    last = time.monotonic()
    try:
        while limit is None or seen < limit:
            msg = consumer.poll(0.5)
            if msg is None:
                if idle_timeout is not None and time.monotonic() - last > idle_timeout:
                    return
                continue
            err = msg.error()
            if err is not None:
                if err.code() != KafkaError._PARTITION_EOF:
                    yield f"! consume error: {err}"
                continue
            last = time.monotonic()
            seen += 1
            value = msg.value() or b""
            if as_json:
                yield value.decode("utf-8", errors="replace")
            else:
                try:
                    yield fmt(value)
                except ValueError as e:
                    yield f"! offset {msg.offset()}: not a {which} record: {e}"
    finally:
        consumer.close()
