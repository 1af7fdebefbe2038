"""All of Forewarn's settings, and the one place that turns them into librdkafka config.

Environment variables use the prefix ``FOREWARN_`` and ``__`` for nesting, e.g.
``FOREWARN_BOOTSTRAP_SERVERS``, ``FOREWARN_TOPICS__ACTIONS``, ``FOREWARN_KAFKA__SASL_PASSWORD``.

>>> s = Settings(bootstrap_servers="k1:9092", kafka={"security_protocol": "SASL_SSL",
...     "sasl_mechanism": "PLAIN", "sasl_username": "u", "sasl_password": "p"})
>>> kafka_config(s, "producer")["sasl.password"]
'p'
>>> s.masked()["kafka"]["sasl_password"]
'**********'
"""

from __future__ import annotations

import difflib
import json
import logging
import re
import socket
import threading
import time
from collections.abc import Iterable, Mapping
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from forewarn.delivery.config import DeliveryConfig
from forewarn.models.event_format import ActionsFormat
from forewarn.pipeline.codecs import DEAD_LETTER_KEEP_BYTES, DecodeSettings

if TYPE_CHECKING:
    from forewarn.experiments.ledger import ExperimentWindows
    from forewarn.pipeline.learner import LearnerSettings

MASK = "**********"
#: librdkafka properties whose values are secrets (passwords, OAuth client secrets, tokens,
#: keys): never printed, whatever the property is called exactly
_SECRET_PROPERTY = re.compile(r"secret|passw|key|token|credential|jaas|oauthbearer\.config", re.I)


def masked_properties(properties: dict[str, str]) -> dict[str, str]:
    """librdkafka properties as they may be printed.

    >>> masked_properties({"client.rack": "a", "sasl.oauthbearer.client.secret": "s3"})
    {'client.rack': 'a', 'sasl.oauthbearer.client.secret': '**********'}
    """
    return {k: MASK if _SECRET_PROPERTY.search(k) else v for k, v in properties.items()}


LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]


class _Repeats(logging.Filter):
    """Lets a librdkafka message through once per ``every`` seconds: a broker that is down
    repeats "Connection refused" twenty times a second. The next one through says how many
    like it were held back."""

    def __init__(self, every: float = 60.0) -> None:
        super().__init__()
        self.every = every
        self._lock = threading.Lock()
        self._seen: dict[tuple[int, str], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        # librdkafka's (facility, client name, text); digits vary (ms, counts): one kind
        text = str(record.args[2]) if isinstance(record.args, tuple) and len(record.args) == 3 \
            else record.getMessage()  # fmt: skip
        key = (record.levelno, re.sub(r"\d+", "#", text))
        now = time.monotonic()
        with self._lock:
            last, held = self._seen.get(key, (-self.every, 0))
            if now - last < self.every:
                self._seen[key] = (last, held + 1)
                return False
            self._seen[key] = (now, 0)
        if held:
            record.msg = f"{record.msg} (and {held} more like it in the last {self.every:g} s)"
        return True


#: librdkafka's own log, through Python logging (``kafka_config`` hands it to every client)
KAFKA_LOG = logging.getLogger("forewarn.kafka")
KAFKA_LOG.addFilter(_Repeats())


class LoggingSettings(BaseSettings):
    """``FOREWARN_LOG_LEVEL`` alone: every command reads it, Kafka settings or not."""

    model_config = SettingsConfigDict(env_prefix="FOREWARN_", extra="ignore")

    log_level: LogLevel = "INFO"


Role = Literal[
    "consumer", "scoring_consumer", "producer", "transactional_producer", "restore", "admin"
]


#: the longest a consumer's fetch (the scoring worker's, a deliverer's, `forewarn tail`'s)
#: waits at the broker for records. A Kafka broker answers as soon as a record is there, so
#: this only bounds an idle fetch (ten a second instead of two); the embedded broker holds
#: every fetch this long, records or not, and at librdkafka's 500 ms a worker that had
#: paused its events for the profiles waited 0.8 s for them again, and read at 4 µs a
#: record instead of 1 (issue 14)
CONSUMER_FETCH_WAIT_MS = 100


class TopicNames(BaseModel):
    """Topic names (design section 3) and how ``forewarn topics create`` makes them."""

    model_config = ConfigDict(frozen=True)

    journey_events: str = "journey-events"
    customer_profiles: str = "customer-profiles"
    actions: str = "outreach-actions"
    decisions: str = "forewarn-decisions"
    dlq: str = "journey-events-dlq"
    state: str = "forewarn-customer-state"
    outcomes: str = "outreach-outcomes"
    #: support contacts, cancellations and purchases, from the scoring workers (low volume)
    milestones: str = "forewarn-milestones"
    #: a sample of moments' contact-risk features, from the scoring workers, for the learner
    feature_rows: str = "forewarn-feature-rows"
    #: stream-learned contact-risk models, accepted and refused (compacted: the model history)
    models: str = "forewarn-models"
    #: outcomes the feedback plane could not count (malformed, unknown action, ...)
    outcomes_dlq: str = "outreach-outcomes-dlq"
    #: the feedback plane's own input, keyed by customer (it creates it: internal)
    feedback: str = "forewarn-feedback-ledger-input"
    #: ``forewarn deliver``: actions held for later (deferred, retrying, paused destination),
    #: compacted, partition by partition beside the actions topic
    delivery_held: str = "forewarn-delivery-held"
    #: ``forewarn deliver``: actions that failed for good, with the destination's last answer
    delivery_dlq: str = "outreach-actions-dlq"
    #: partitions of journey-events and customer-profiles (kept equal: co-partitioned);
    #: the ceiling on how many scoring workers can share the work
    partitions: int = Field(default=6, ge=1)
    replication_factor: int = Field(default=1, ge=1)

    def suffixed(self, tag: str) -> TopicNames:
        """The same layout with ``-tag`` on every name (isolated runs: tests, benchmarks)."""
        names = {f: f"{getattr(self, f)}-{tag}" for f in _NAME_FIELDS}
        return self.model_copy(update=names)

    def compacted(self) -> set[str]:
        return {self.customer_profiles, self.state, self.models, self.delivery_held}

    def all(self) -> list[str]:
        return [
            self.journey_events,
            self.customer_profiles,
            self.actions,
            self.decisions,
            self.dlq,
            self.state,
            self.outcomes,
            self.milestones,
            self.feature_rows,
            self.models,
            self.outcomes_dlq,
            self.delivery_held,
            self.delivery_dlq,
        ]


_NAME_FIELDS = ("journey_events", "customer_profiles", "actions", "decisions", "dlq", "state",
                "outcomes", "milestones", "feature_rows", "models", "outcomes_dlq",
                "feedback", "delivery_held", "delivery_dlq")  # fmt: skip


class KafkaSecurity(BaseModel):
    """Connection security, passed through to librdkafka."""

    model_config = ConfigDict(frozen=True)

    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: SecretStr | None = None
    ssl_ca_location: str | None = None
    ssl_certificate_location: str | None = None
    ssl_key_location: str | None = None
    ssl_key_password: SecretStr | None = None
    #: any other librdkafka property, e.g. {"client.rack": "eu-west-1a"}; values of
    #: properties whose names say secret, password, key or token are masked when printed
    extra: dict[str, str] = Field(default_factory=dict)

    def __repr_args__(self) -> Iterable[tuple[str | None, Any]]:
        for name, value in super().__repr_args__():
            yield name, masked_properties(value) if name == "extra" else value


class LearnerConfig(BaseModel):
    """``forewarn learn``: the stream learner of the contact-risk model
    (``FOREWARN_LEARNER__*``)."""

    model_config = ConfigDict(frozen=True)

    #: a moment is positive when the customer contacts support within this long after it
    horizon_minutes: float = Field(default=30.0, gt=0)
    #: a challenger is fitted every this long of stream time (on a grid from midnight UTC)
    refit_every_hours: float = Field(default=24.0, gt=0)
    #: an accepted model serves events this long (stream time) after its fit, so that
    #: every worker has it before its events arrive
    activation_delay_minutes: float = Field(default=60.0, ge=0)
    #: the watermark is held back this long behind the inputs, for records that come late
    lateness_seconds: float = Field(default=60.0, ge=0)
    #: a challenger replaces the champion only if its log loss is this share lower
    margin: float = Field(default=0.01, ge=0, lt=1)
    #: fewer matured labels than this in the judging window decide nothing
    min_positives: int = Field(default=30, ge=1)
    min_rows: int = Field(default=300, ge=1)
    #: labelled rows kept at most
    capacity: int = Field(default=200_000, ge=1000)
    #: rows waiting for their horizon at most (about feature rows per second times the
    #: horizon); beyond it rows are refused and counted
    max_waiting_rows: int = Field(default=1_000_000, ge=1000)
    #: the share of feature rows the learner keeps (a hash of customer and event), for
    #: streams whose rows outgrow ``max_waiting_rows``
    row_share: float = Field(default=1.0, gt=0, le=1)
    #: names the learner's Kafka client (it reads by assignment and commits nothing)
    group_id: str = "forewarn-learner"

    def learner_settings(self, friction_version: str) -> LearnerSettings:
        """The pure learner's settings (the same in ``forewarn learn`` and ``evaluate``)."""
        from forewarn.pipeline.learner import LearnerSettings

        return LearnerSettings(
            horizon=self.horizon_minutes * 60,
            refit_every=self.refit_every_hours * 3600,
            capacity=self.capacity,
            margin=self.margin,
            min_positives=self.min_positives,
            min_rows=self.min_rows,
            activation_delay=self.activation_delay_minutes * 60,
            friction_version=friction_version,
            row_share=self.row_share,
            max_waiting=self.max_waiting_rows,
        )


class FeedbackConfig(BaseModel):
    """``forewarn feedback``: the feedback plane's experiment windows and its group
    (``FOREWARN_FEEDBACK__*``)."""

    model_config = ConfigDict(frozen=True)

    #: the feedback plane's consumer group, and the prefix of its tables' changelogs
    group_id: str = "forewarn-feedback"
    #: a support contact counts against an episode this long after its trigger
    contact_window_hours: float = Field(default=24.0, gt=0)
    cancellation_window_days: float = Field(default=14.0, gt=0)
    conversion_window_days: float = Field(default=7.0, gt=0)
    #: records this much older than their partition's stream time still count
    allowed_lateness_minutes: float = Field(default=10.0, ge=0)
    #: an outcome whose decision has not arrived waits this long (stream time), then goes
    #: to the outcomes' dead-letter topic as ``unknown_action``
    orphan_grace_minutes: float = Field(default=15.0, ge=0)
    #: decisions kept per customer for ``forewarn why``
    recent_decisions: int = Field(default=20, ge=1, le=1000)
    #: aiokafka's session timeout (a dead feedback worker's partitions move after it)
    session_timeout_seconds: float = Field(default=30.0, gt=0)

    def windows(self) -> ExperimentWindows:
        from forewarn.experiments.ledger import ExperimentWindows

        return ExperimentWindows(
            contact=timedelta(hours=self.contact_window_hours),
            cancellation=timedelta(days=self.cancellation_window_days),
            conversion=timedelta(days=self.conversion_window_days),
            allowed_lateness=timedelta(minutes=self.allowed_lateness_minutes),
            orphan_grace=timedelta(minutes=self.orphan_grace_minutes),
            recent_decisions=self.recent_decisions,
        )


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="FOREWARN_", env_nested_delimiter="__", frozen=True, extra="ignore"
    )

    bootstrap_servers: str = "127.0.0.1:9092"
    #: the scoring workers' consumer group
    group_id: str = "forewarn-scoring"
    topics: TopicNames = Field(default_factory=TopicNames)
    kafka: KafkaSecurity = Field(default_factory=KafkaSecurity)

    #: the rulebook; empty means the default shipped in forewarn/rules/default.yaml. A
    #: changed file is picked up between batches; one that fails lint is refused and the
    #: worker keeps the last good rulebook.
    rules_path: Path | None = None
    #: the churn model's artifact directory (default: the shipped one; "none": friction only).
    #: Replace the directory's files, or point a symlink elsewhere: the worker picks the new
    #: model up between batches, and keeps the last good one if the new one is refused.
    model_path: Path | None = None
    #: a contact-risk model trained offline (``forewarn train --target contact``); default
    #: none: the worker serves what the stream learner publishes on the models topic
    contact_model_path: Path | None = None
    #: serve the stream-learned contact-risk models from the models topic
    learned_models: bool = True
    #: the share of moments without trouble published as feature rows for the learner
    #: (moments with an error or a checkout left in the last hour are all published); 0
    #: publishes none
    feature_row_share: float = Field(default=0.05, ge=0, le=1)
    learner: LearnerConfig = Field(default_factory=LearnerConfig)
    feedback: FeedbackConfig = Field(default_factory=FeedbackConfig)
    #: ``forewarn deliver``: the destinations file (YAML; docs in README, "Delivering actions")
    delivery_path: Path | None = None
    delivery: DeliveryConfig = Field(default_factory=DeliveryConfig)
    #: the feedback plane's HTTP API (why, experiments, health, metrics)
    feedback_http_port: int = Field(default=9465, ge=1, le=65535)
    feedback_http_host: str = "127.0.0.1"
    #: how often the worker looks for a changed model or rulebook (between batches)
    reload_check_seconds: float = Field(default=5.0, gt=0)
    #: the friction score's versioned config (default: forewarn/models/friction.yaml)
    friction_path: Path | None = None
    state_dir: Path | None = None

    #: Prometheus metrics; 0 turns the HTTP endpoint off
    http_port: int = Field(default=9464, ge=0, le=65535)
    #: bind address; set 0.0.0.0 inside a container so Prometheus can scrape it
    http_host: str = "127.0.0.1"

    #: one Kafka transaction per batch (outputs, state changelog and offsets together);
    #: off gives at-least-once (flush, then commit) for brokers without transactions
    exactly_once: bool = True
    #: how actions and decisions are framed: ``json`` (the contract's JSON) or
    #: ``cloudevents`` (CloudEvents Kafka binary mode: the same JSON, ``ce_*`` headers)
    actions_format: ActionsFormat = "json"
    #: this worker's stable name: with the group id it forms the transactional id, so a
    #: restarted worker fences its previous incarnation and aborts what it left open.
    #: Give every concurrently running worker its own (a StatefulSet pod name is ideal).
    instance_id: str = Field(default_factory=socket.gethostname, min_length=1)
    transaction_timeout_ms: int = Field(default=60_000, ge=1000)
    #: customers with no event for this long (in stream time) keep only their profile
    idle_ttl_days: float = Field(default=30.0, gt=0)
    #: liveness fails when the loop has not turned for this long. Waiting for the broker
    #: counts as turning; the longest single wait is librdkafka's request timeout
    #: (``socket.timeout.ms``, 60 s), so keep this well above it
    liveness_timeout_seconds: float = Field(default=120.0, gt=0)
    #: a worker without partitions while records wait unread and the group's offsets have not
    #: moved for this long (a broker that came back empty) leaves and rejoins the group; if
    #: that does not help within the same time, liveness fails so the process restarts.
    #: A spare worker in a working group is never affected.
    rejoin_after_seconds: float = Field(default=30.0, gt=0)
    #: how long ``topics``, ``tail`` and ``simulate`` wait for Kafka's first answer before
    #: they exit (code 1)
    connect_timeout_seconds: float = Field(default=5.0, gt=0)
    #: how long ``forewarn score`` waits for Kafka at start before it exits (code 1)
    startup_timeout_seconds: float = Field(default=60.0, gt=0)
    #: events wait for their partition's profiles to be read at most this long
    profile_wait_seconds: float = Field(default=120.0, gt=0)
    #: fault injection for chaos drills: after this many committed batches, produce the
    #: next batch and then hold its transaction open (logging "fault injection: holding")
    #: until stopped, so a kill lands mid-transaction. Never set in production.
    fault_hang_after_batches: int | None = Field(default=None, ge=0)

    #: records per batch (one transaction) on a live stream
    batch_size: int = Field(default=500, ge=1, le=100_000)
    #: the largest batch while a backlog waits: the limit doubles from ``batch_size`` while
    #: reads come back full and halves back as they come back short (a transaction's fixed
    #: cost is shared by more records when the worker is behind; ``pipeline/batch_limit.py``)
    catch_up_batch_size: int = Field(default=5000, ge=1, le=100_000)
    batch_timeout_seconds: float = Field(default=0.5, gt=0)
    session_timeout_ms: int = Field(default=45_000, ge=1000)
    #: static group membership: the scoring consumer joins as ``instance_id``
    #: (``group.instance.id``), so a worker restarted within the session timeout takes its
    #: partitions back at once, without a rebalance of the others. The price: a worker that
    #: stops for good holds its partitions until the session times out (docs/operations.md).
    #: Off by default because the embedded broker never hands a stopped static member's
    #: partitions to the others; the Helm chart and compose (Apache Kafka) turn it on
    static_membership: bool = False

    #: upstream event type -> canonical type, e.g. {"pay_fail": "payment_failed"}
    event_aliases: dict[str, str] = Field(default_factory=dict)
    #: refuse (dead-letter) event types outside the vocabulary instead of counting them
    strict_event_types: bool = False
    max_event_bytes: int = Field(default=64 * 1024, ge=256)
    #: original bytes a dead letter keeps of a record's value (the rest is cut, with its size
    #: and SHA-256 recorded): a dead letter always fits in a Kafka record
    dead_letter_keep_bytes: int = Field(default=DEAD_LETTER_KEEP_BYTES, ge=1024, le=256 * 1024)
    #: the largest record the worker produces; keep it at or below the output topics'
    #: ``max.message.bytes`` (the worker also reads that where the broker reports it)
    max_record_bytes: int = Field(default=1_000_000, ge=64 * 1024)
    #: events stamped further than this in the future are dead-lettered
    future_tolerance_seconds: float = Field(default=300.0, ge=0)

    def decode_settings(self) -> DecodeSettings:
        return DecodeSettings(
            aliases=dict(self.event_aliases),
            max_bytes=self.max_event_bytes,
            future_tolerance=timedelta(seconds=self.future_tolerance_seconds),
            strict_types=self.strict_event_types,
            dead_letter_keep_bytes=self.dead_letter_keep_bytes,
        )

    @property
    def transactional_id(self) -> str:
        return f"{self.group_id}-{self.instance_id}"

    def masked(self) -> dict[str, Any]:
        """Settings as logged at start: secrets shown as asterisks."""
        data = self.model_dump(mode="json")
        data["kafka"]["extra"] = masked_properties(data["kafka"]["extra"])
        return data


def kafka_config(settings: Settings, role: Role, **overrides: Any) -> dict[str, Any]:
    """librdkafka configuration for a client of ``role``; the only place it is built."""
    sec = settings.kafka
    conf: dict[str, Any] = {
        "bootstrap.servers": settings.bootstrap_servers,
        "security.protocol": sec.security_protocol,
        "client.id": f"forewarn-{role}",
        "logger": KAFKA_LOG,
    }
    optional = {
        "sasl.mechanism": sec.sasl_mechanism,
        "sasl.username": sec.sasl_username,
        "sasl.password": sec.sasl_password.get_secret_value() if sec.sasl_password else None,
        "ssl.ca.location": sec.ssl_ca_location,
        "ssl.certificate.location": sec.ssl_certificate_location,
        "ssl.key.location": sec.ssl_key_location,
        "ssl.key.password": sec.ssl_key_password.get_secret_value()
        if sec.ssl_key_password
        else None,
    }
    conf.update({k: v for k, v in optional.items() if v is not None})
    if role == "scoring_consumer" and settings.static_membership:
        conf["group.instance.id"] = settings.instance_id
    if role in ("consumer", "scoring_consumer"):
        conf.update(
            {
                "group.id": settings.group_id,
                "enable.auto.commit": False,
                "auto.offset.reset": "earliest",
                "isolation.level": "read_committed",
                "session.timeout.ms": settings.session_timeout_ms,
                # see topics created (or recreated) within seconds, not librdkafka's 5 min:
                # a group is only assigned partitions its members know of
                "topic.metadata.refresh.interval.ms": 10_000,
                # range gives partition i of journey-events and customer-profiles to the same
                # worker when both have the same partition count (co-partitioning); sticky
                # assignors do not promise that.
                "partition.assignment.strategy": "range",
                "fetch.wait.max.ms": CONSUMER_FETCH_WAIT_MS,
            }
        )
    elif role == "restore":
        # Reads a changelog partition by assignment to its end; never joins or commits.
        conf.update(
            {
                "group.id": f"{settings.group_id}-restore",
                # it reads to the end and stops: a fetch need not wait for more (the
                # embedded broker parks each one for this long, records or not)
                "fetch.wait.max.ms": 10,
                "enable.auto.commit": False,
                "enable.partition.eof": True,
                "isolation.level": "read_committed",
                "auto.offset.reset": "earliest",
            }
        )
    if role in ("producer", "transactional_producer"):
        conf.update({"enable.idempotence": True, "linger.ms": 5, "compression.type": "lz4"})
    if role == "transactional_producer":
        conf.update(
            {
                "transactional.id": settings.transactional_id,
                "transaction.timeout.ms": settings.transaction_timeout_ms,
            }
        )
    conf.update(sec.extra)
    conf.update(overrides)
    return conf


def faust_config(settings: Settings) -> dict[str, Any]:
    """The feedback plane's faust (aiokafka) configuration: the same brokers, security and
    replication as the librdkafka clients, in faust's terms."""
    import ssl

    import faust

    sec = settings.kafka
    context: ssl.SSLContext | None = None
    if sec.security_protocol in ("SSL", "SASL_SSL"):
        context = ssl.create_default_context(cafile=sec.ssl_ca_location)
        if sec.ssl_certificate_location:
            context.load_cert_chain(
                sec.ssl_certificate_location,
                sec.ssl_key_location,
                sec.ssl_key_password.get_secret_value() if sec.ssl_key_password else None,
            )
    credentials: Any = None
    if sec.security_protocol.startswith("SASL"):
        credentials = faust.SASLCredentials(
            username=sec.sasl_username,
            password=sec.sasl_password.get_secret_value() if sec.sasl_password else None,
            mechanism=sec.sasl_mechanism or "PLAIN",
            ssl_context=context,
        )
    elif context is not None:
        credentials = faust.SSLCredentials(context)
    session = settings.feedback.session_timeout_seconds
    return {
        "broker": [f"kafka://{b.strip()}" for b in settings.bootstrap_servers.split(",")],
        "broker_credentials": credentials,
        "topic_partitions": settings.topics.partitions,
        "topic_replication_factor": settings.topics.replication_factor,
        "broker_session_timeout": session,
        "broker_heartbeat_interval": min(3.0, session / 3),
        "broker_request_timeout": max(90.0, session * 2),
        "web_bind": settings.feedback_http_host,
        "web_host": settings.feedback_http_host,
        "web_port": settings.feedback_http_port,
    }


#: read by ``score`` but never listed: chaos drills only (docs/operations.md)
UNLISTED_SETTINGS = frozenset({"fault_hang_after_batches"})
#: the settings each long-running command reads (``forewarn CMD --help`` lists them)
_CONNECTION = ("bootstrap_servers", "kafka", "topics", "log_level")
COMMAND_SETTINGS: dict[str, tuple[str, ...]] = {
    "score": (
        *_CONNECTION, "group_id", "instance_id", "rules_path", "model_path",
        "contact_model_path", "learned_models", "feature_row_share", "reload_check_seconds",
        "friction_path", "state_dir", "http_port", "http_host", "exactly_once",
        "transaction_timeout_ms", "idle_ttl_days", "liveness_timeout_seconds",
        "rejoin_after_seconds", "startup_timeout_seconds", "profile_wait_seconds",
        "batch_size", "catch_up_batch_size", "batch_timeout_seconds", "session_timeout_ms",
        "static_membership", "event_aliases",
        "strict_event_types", "max_event_bytes", "dead_letter_keep_bytes", "max_record_bytes",
        "future_tolerance_seconds", "actions_format",
    ),
    "learn": (*_CONNECTION, "learner", "friction_path", "http_port", "http_host"),
    "deliver": (
        *_CONNECTION, "delivery_path", "delivery", "instance_id", "exactly_once",
        "transaction_timeout_ms", "session_timeout_ms", "batch_timeout_seconds",
        "startup_timeout_seconds", "http_host",
    ),
    "feedback": (
        *_CONNECTION, "feedback", "feedback_http_port", "feedback_http_host", "rules_path",
        "state_dir",
    ),
    "topics": (*_CONNECTION, "connect_timeout_seconds"),
    "tail": (*_CONNECTION, "connect_timeout_seconds"),
    "simulate": (*_CONNECTION, "connect_timeout_seconds"),
    "evaluate": ("learner", "log_level"),
    "replay": ("learner", "log_level"),
    "why": ("feedback_http_host", "feedback_http_port", "log_level"),
    "experiments": ("feedback_http_host", "feedback_http_port", "log_level"),
}  # fmt: skip
#: every other command reads only ``FOREWARN_LOG_LEVEL``
_ONLY_LOG_LEVEL = ("log_level",)
#: ``FOREWARN_*`` variables that are not settings: the test suite's and the benchmark's
#: broker, the deployment's image
NOT_SETTINGS = frozenset({"FOREWARN_TEST_BOOTSTRAP", "FOREWARN_BENCH_BOOTSTRAP",
                          "FOREWARN_IMAGE"})  # fmt: skip


def _variables() -> dict[str, str]:
    """Every ``FOREWARN_*`` variable a setting reads -> the setting's name."""
    out = {"FOREWARN_LOG_LEVEL": "log_level"}
    for name, field in Settings.model_fields.items():
        out[f"FOREWARN_{name.upper()}"] = name
        default = field.get_default(call_default_factory=True)
        if isinstance(default, BaseModel):
            for sub in type(default).model_fields:
                out[f"FOREWARN_{name.upper()}__{sub.upper()}"] = f"{name}.{sub}"
    return out


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """A warning for each ``FOREWARN_*`` variable no setting reads that looks like a
    misspelt setting (a known one is near it, or it names a field of a known group such as
    ``FOREWARN_TOPICS__``), with the nearest known name. Others are left alone: a
    destinations file may name its own secrets' variables, ``FOREWARN_`` ones among them.

    >>> unknown_variables({"FOREWARN_BOOTSTRAP_SERVER": "k:9092", "FOREWARN_GROUP_ID": "g"})
    ['FOREWARN_BOOTSTRAP_SERVER is not a Forewarn setting and is ignored; did you mean FOREWARN_BOOTSTRAP_SERVERS?']
    """  # noqa: E501
    known = _variables()
    out = []
    for var in sorted(environ):
        upper = var.upper()
        if not upper.startswith("FOREWARN_") or upper in known or upper in NOT_SETTINGS:
            continue
        near = difflib.get_close_matches(upper, known, n=1, cutoff=0.8)
        group = upper.split("__", 1)[0] + "__" if "__" in upper else None
        if near:
            out.append(f"{var} is not a Forewarn setting and is ignored; did you mean {near[0]}?")
        elif group is not None and any(k.startswith(group) for k in known):
            out.append(f"{var} is not a Forewarn setting and is ignored")
    return out


def settings_help(command: str) -> str:
    """The environment variables ``command`` reads, with their defaults (for ``--help``).

    >>> print(settings_help("learn").splitlines()[1])
      FOREWARN_BOOTSTRAP_SERVERS=127.0.0.1:9092
    """
    lines = ["settings (environment variables, with their defaults):"]
    for name in COMMAND_SETTINGS.get(command, _ONLY_LOG_LEVEL):
        if name == "log_level":
            lines.append("  FOREWARN_LOG_LEVEL=INFO")
            continue
        if name == "instance_id":
            lines.append("  FOREWARN_INSTANCE_ID=(the host name)")
            continue
        field = Settings.model_fields[name]
        default = field.get_default(call_default_factory=True)
        if isinstance(default, BaseModel):
            for sub, value in default.model_dump(mode="json").items():
                lines.append(f"  FOREWARN_{name.upper()}__{sub.upper()}={_shown(value)}")
        else:
            lines.append(f"  FOREWARN_{name.upper()}={_shown(default)}")
    return "\n".join(lines)


def _shown(value: Any) -> str:
    if value is None:
        return "(unset)"
    if isinstance(value, SecretStr):
        return MASK
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, dict | list):
        return json.dumps(value)
    return str(value)
