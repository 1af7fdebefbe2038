"""Create or verify Forewarn's topics (design section 3)."""

from __future__ import annotations

from dataclasses import dataclass

from confluent_kafka import Consumer, KafkaError, KafkaException
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewTopic

from forewarn.errors import ForewarnError
from forewarn.streams.settings import Settings, kafka_config


class KafkaUnreachable(ForewarnError):
    """No broker answered within ``FOREWARN_CONNECT_TIMEOUT_SECONDS``: the environment's
    to fix (exit code 1)."""

    exit_code = 1


def unreachable(settings: Settings, within: float) -> KafkaUnreachable:
    return KafkaUnreachable(
        f"cannot reach Kafka at {settings.bootstrap_servers} (FOREWARN_BOOTSTRAP_SERVERS) "
        f"within {within:g} s; is the broker running?"
    )


class TopicMissing(ForewarnError):
    """A topic a command reads or writes does not exist (yet): exit code 1."""

    exit_code = 1


def require(settings: Settings, existing: dict[str, int], topics: list[str]) -> None:
    """``TopicMissing`` naming the first of ``topics`` the cluster does not have."""
    for topic in topics:
        if topic not in existing:
            raise TopicMissing(
                f"topic {topic} does not exist at {settings.bootstrap_servers}; create "
                "Forewarn's topics with: forewarn topics create (or set FOREWARN_TOPICS__*)"
            )


def reach(settings: Settings, timeout: float | None = None) -> dict[str, int]:
    """The cluster's topics and partition counts, or ``KafkaUnreachable`` when no broker
    answers within ``timeout`` (default ``settings.connect_timeout_seconds``). The admin
    client is never polled, so a broker that is down costs no log lines."""
    within = settings.connect_timeout_seconds if timeout is None else timeout
    try:
        return existing_partitions(AdminClient(kafka_config(settings, "admin")), within)
    except KafkaException as e:
        raise unreachable(settings, within) from e


@dataclass(frozen=True, slots=True)
class TopicReport:
    topic: str
    partitions: int
    compacted: bool
    #: created | exists | missing | wrong partitions (N, want M)
    status: str

    @property
    def ok(self) -> bool:
        return self.status in ("created", "exists")


def _wanted(settings: Settings) -> dict[str, tuple[int, bool]]:
    t = settings.topics
    compacted = t.compacted()
    # The model history is small and read whole by every worker: one partition keeps it in
    # the order the learner wrote it.
    return {name: (1 if name == t.models else t.partitions, name in compacted) for name in t.all()}


def existing_partitions(client: AdminClient | Consumer, timeout: float = 10.0) -> dict[str, int]:
    """Topic -> partition count, for every topic the cluster has (any client's metadata)."""
    md = client.list_topics(timeout=timeout)
    return {name: len(m.partitions) for name, m in md.topics.items() if not m.error}


def _check(settings: Settings, existing: dict[str, int], created: set[str]) -> list[TopicReport]:
    out = []
    for name, (parts, compacted) in _wanted(settings).items():
        have = existing.get(name)
        if name in created:
            status = "created"
        elif have is None:
            status = "missing"
        elif have != parts and name in (
            settings.topics.journey_events,
            settings.topics.customer_profiles,
            settings.topics.models,
        ):
            # The co-partitioned pair must match exactly (a customer's events and profile
            # land on the same worker), and the model history is one partition (read whole,
            # in the learner's order, by every worker).
            status = f"wrong partitions ({have}, want {parts})"
        else:
            status = "exists"
        out.append(TopicReport(name, have or parts, compacted, status))
    return out


def verify_topics(settings: Settings, timeout: float = 10.0) -> list[TopicReport]:
    return _check(settings, reach(settings), set())


def create_topics(settings: Settings, timeout: float = 10.0) -> list[TopicReport]:
    """Create what is missing; report every topic. Idempotent."""
    existing = reach(settings)
    admin = AdminClient(kafka_config(settings, "admin"))
    new = []
    for name, (parts, compacted) in _wanted(settings).items():
        if name in existing:
            continue
        config = {"cleanup.policy": "compact"} if compacted else {}
        new.append(
            NewTopic(
                name,
                num_partitions=parts,
                replication_factor=settings.topics.replication_factor,
                config=config,
            )
        )
    created: set[str] = set()
    if new:
        for name, fut in admin.create_topics(new, operation_timeout=timeout).items():
            try:
                fut.result()
                created.add(name)
            except KafkaException as e:
                if e.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise
        existing = existing_partitions(admin, timeout)
    return _check(settings, existing, created)


def format_report(reports: list[TopicReport]) -> str:
    width = max(len(r.topic) for r in reports)
    lines = [f"{'topic':<{width}}  partitions  cleanup   status"]
    for r in reports:
        cleanup = "compact" if r.compacted else "delete"
        lines.append(f"{r.topic:<{width}}  {r.partitions:>10}  {cleanup:<8}  {r.status}")
    return "\n".join(lines)
