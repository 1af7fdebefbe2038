"""Forewarn's Prometheus metrics: the one module that defines them.

Names follow design section 6: prefix ``forewarn_``, base units, ``_total`` counters, and
never a customer or event id as a label (every label has a small, fixed set of values).
Each worker has its own registry so several can live in one process (tests, the demo).
"""

from __future__ import annotations

import contextlib
from http.server import ThreadingHTTPServer

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
)

from forewarn.experiments.ledger import OutcomeProblem
from forewarn.experiments.report import ExperimentTally
from forewarn.models.contracts import DeadLetterReason
from forewarn.pipeline.results import BatchResult
from forewarn.streams.http import Health, serve_http

_BATCH_SIZES = (1, 10, 50, 100, 250, 500, 1000, 2500, 5000)
#: a scoring batch's phases, in order: the worker's read, the engine's five (fold without the
#: features it computes), then the worker's encode (changelog and outputs) and commit
BATCH_PHASES = ("read", "decode", "fold", "features", "score", "decide", "save", "encode",
                "commit")  # fmt: skip
_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_STATE_BYTES = (64, 128, 256, 512, 768, 1024, 1536, 2048, 4096, 8192)
_RESTORE_SECONDS = (0.01, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
#: the version label while no model serves (friction only, or no contact-risk model yet), so
#: that a dashboard shows it rather than nothing
NO_MODEL = "none"
_AGES = (1, 5, 15, 60, 300, 900, 3600, 4 * 3600, 24 * 3600, 7 * 24 * 3600)


class ScoringMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.events = Counter(
            "forewarn_events_total",
            "Journey events accepted, by type (types outside the vocabulary count as 'other')",
            ["type"],
            registry=r,
        )
        self.dead_letters = Counter(
            "forewarn_dead_letters_total",
            "Records sent to the dead-letter topic, by reason",
            ["reason"],
            registry=r,
        )
        self.duplicates = Counter(
            "forewarn_duplicate_events_total",
            "Events dropped because their event_id was already seen for the customer",
            registry=r,
        )
        self.replayed = Counter(
            "forewarn_replayed_records_total",
            "Records skipped because their customer's state already includes them (a batch "
            "replayed after a failure)",
            registry=r,
        )
        self.key_problems = Counter(
            "forewarn_key_problems_total",
            "Events whose Kafka key was missing or differed from the payload's customer_id "
            "(the payload wins)",
            ["problem"],
            registry=r,
        )
        self.profiles = Counter(
            "forewarn_profile_updates_total",
            "Customer profile records applied",
            ["kind"],
            registry=r,
        )
        self.actions = Counter(
            "forewarn_actions_total",
            "Outreach actions emitted, by rule and channel",
            ["rule", "channel"],
            registry=r,
        )
        self.suppressions = Counter(
            "forewarn_suppressions_total",
            "Decisions suppressed by a policy, by rule and reason",
            ["rule", "reason"],
            registry=r,
        )
        self.batch_size = Histogram(
            "forewarn_batch_size", "Records per consumed batch", buckets=_BATCH_SIZES, registry=r
        )
        self.batch_seconds = Histogram(
            "forewarn_batch_processing_seconds",
            "Time to decode, score, decide and publish one batch",
            buckets=_SECONDS,
            registry=r,
        )
        self.phase_seconds = Counter(
            "forewarn_batch_phase_seconds",
            "Time spent in each phase of the batches (read includes waiting for records; "
            "commit is producing, flushing and committing the transaction)",
            ["phase"],
            registry=r,
        )
        for phase in BATCH_PHASES:
            self.phase_seconds.labels(phase)
        self.ready_after_assignment = Gauge(
            "forewarn_ready_after_assignment_seconds",
            "Seconds from the last partition assignment to the first batch committed after it "
            "(restore included)",
            registry=r,
        )
        self.event_age = Histogram(
            "forewarn_event_age_at_decision_seconds",
            "Age of the trigger event when its decision was made",
            buckets=_AGES,
            registry=r,
        )
        self.customers = Gauge(
            "forewarn_customers_tracked", "Customers with state on this worker", registry=r
        )
        self.consume_errors = Counter(
            "forewarn_consume_errors_total",
            "Errors reported by the Kafka consumer",
            ["code"],
            registry=r,
        )
        self.up = Gauge("forewarn_worker_up", "1 while the scoring loop runs", registry=r)
        self.volume_threshold = Gauge(
            "forewarn_volume_threshold",
            "The score a volume-targeted rule's moment needs now, per partition (its score's "
            "top while warming up)",
            ["rule", "partition"],
            registry=r,
        )
        #: (rule, partition) labels the volume gauges were set for
        self._volume_labels: set[tuple[str, str]] = set()
        self.volume_per_day = Gauge(
            "forewarn_volume_actions_per_day",
            "A volume-targeted rule's actions a day over its recent window, per partition: "
            "kind=target (N per 1,000 active customers) or sent",
            ["rule", "partition", "kind"],
            registry=r,
        )
        self.transactions = Counter(
            "forewarn_transactions_total",
            "Batch transactions, by outcome (committed or aborted)",
            ["outcome"],
            registry=r,
        )
        self.rebalances = Counter(
            "forewarn_rebalances_total",
            "Partition assignment changes seen by this worker, by kind",
            ["kind"],
            registry=r,
        )
        self.partitions = Gauge(
            "forewarn_assigned_partitions",
            "journey-events partitions this worker owns",
            registry=r,
        )
        self.consumer_lag = Gauge(
            "forewarn_consumer_lag_records",
            "Journey events waiting to be read, per owned partition: the high watermark the "
            "last fetch reported minus the worker's position (updated between batches)",
            ["partition"],
            registry=r,
        )
        self.restoring = Gauge(
            "forewarn_state_restoring_partitions",
            "Partitions whose state is being restored (not ready while above 0)",
            registry=r,
        )
        self.restore_records = Counter(
            "forewarn_state_restore_records_total",
            "Changelog records read to restore customer state",
            registry=r,
        )
        self.restore_remaining = Gauge(
            "forewarn_state_restore_remaining_records",
            "Changelog records left to read in the partition being restored",
            registry=r,
        )
        self.restore_seconds = Histogram(
            "forewarn_state_restore_seconds",
            "Time to restore the state of the partitions a worker was given (read together)",
            buckets=_RESTORE_SECONDS,
            registry=r,
        )
        self.state_bytes = Histogram(
            "forewarn_state_record_bytes",
            "Size of one customer's serialized state as written to the changelog",
            buckets=_STATE_BYTES,
            registry=r,
        )
        self.model_info = Gauge(
            "forewarn_model_info",
            "The churn model in use (1), by version",
            ["version"],
            registry=r,
        )
        self.contact_model_info = Gauge(
            "forewarn_contact_model_info",
            "The newest contact-risk model the worker holds (1), by version: from a file "
            "(FOREWARN_CONTACT_MODEL_PATH), or learned (the models topic; it scores events "
            "from the stream time its release names, up to an hour after it appears here)",
            ["version"],
            registry=r,
        )
        self.learned_models = Counter(
            "forewarn_learned_models_total",
            "Stream-learned contact-risk releases read from the models topic, by outcome: "
            "served (from the stream time they name), late (this worker had already scored "
            "events past that time, which were scored by the previous version), unreadable",
            ["outcome"],
            registry=r,
        )
        self.model_reloads = Counter(
            "forewarn_model_reloads_total",
            "Attempts to load a changed churn or contact-risk model file, by outcome (loaded or "
            "refused)",
            ["outcome"],
            registry=r,
        )
        self.rulebook_info = Gauge(
            "forewarn_rulebook_info",
            "The rulebook in use (1), by version",
            ["version"],
            registry=r,
        )
        self.rulebook_reloads = Counter(
            "forewarn_rulebook_reloads_total",
            "Attempts to load a changed rulebook, by outcome (loaded or refused)",
            ["outcome"],
            registry=r,
        )
        self.expired = Counter(
            "forewarn_state_expired_total",
            "Idle customers whose activity state expired",
            registry=r,
        )
        self.isolations = Counter(
            "forewarn_batch_isolations_total",
            "Batches whose scoring raised and were split to isolate the records at fault",
            registry=r,
        )
        self.kafka_retries = Counter(
            "forewarn_kafka_retries_total",
            "Kafka calls retried because the broker did not answer in time, by operation",
            ["operation"],
            registry=r,
        )
        self.producer_restarts = Counter(
            "forewarn_producer_restarts_total",
            "Producers replaced after a fatal error (not fencing)",
            registry=r,
        )
        self.rejoins = Counter(
            "forewarn_group_rejoins_total",
            "Times the worker left and rejoined its consumer group after going unassigned",
            registry=r,
        )
        self.changelog_resets = Counter(
            "forewarn_state_changelog_resets_total",
            "Partition stores cleared because the changelog ended before their checkpoint",
            registry=r,
        )

        # Known label values start at 0, so that rate() and the alerts see the series before
        # the first refusal, abort or dead letter (Prometheus's advice for counters).
        for outcome in ("loaded", "refused"):
            self.model_reloads.labels(outcome)
            self.rulebook_reloads.labels(outcome)
        for outcome in ("committed", "aborted"):
            self.transactions.labels(outcome)
        for reason in DeadLetterReason:
            self.dead_letters.labels(reason.value)

    def observe_batch(self, result: BatchResult, n_records: int, seconds: float) -> None:
        stats = result.stats
        self.batch_size.observe(n_records)
        self.batch_seconds.observe(seconds)
        for phase, spent in stats.phase_seconds.items():
            self.phase_seconds.labels(phase).inc(spent)
        for t, n in stats.events_by_type.items():
            self.events.labels(t).inc(n)
        for reason, n in stats.dead_letters_by_reason.items():
            self.dead_letters.labels(reason).inc(n)
        if stats.duplicates:
            self.duplicates.inc(stats.duplicates)
        if stats.replayed:
            self.replayed.inc(stats.replayed)
        if stats.key_missing:
            self.key_problems.labels("missing").inc(stats.key_missing)
        if stats.key_mismatch:
            self.key_problems.labels("mismatch").inc(stats.key_mismatch)
        if stats.profiles_updated:
            self.profiles.labels("update").inc(stats.profiles_updated)
        if stats.profiles_deleted:
            self.profiles.labels("delete").inc(stats.profiles_deleted)
        for a in result.actions:
            self.actions.labels(a.rule_id, a.channel.value).inc()
        for d in result.decisions:
            if d.suppressed_by is not None:
                self.suppressions.labels(d.rule_id, d.suppressed_by.value).inc()
        for age in stats.decision_event_ages:
            self.event_age.observe(age)
        for v in result.volumes:
            labels = (v.rule_id, str(v.partition))
            self._volume_labels.add(labels)
            self.volume_threshold.labels(*labels).set(v.threshold)
            self.volume_per_day.labels(*labels, "target").set(v.target_per_day)
            self.volume_per_day.labels(*labels, "sent").set(v.sent_per_day)
        if stats.expired:
            self.expired.inc(stats.expired)

    def partitions_gone(self, partitions: set[int]) -> None:
        """Drop the per-partition gauges of partitions this worker no longer owns (another
        worker reports them now)."""
        for p in partitions:
            with contextlib.suppress(KeyError):
                self.consumer_lag.remove(str(p))
        for labels in [lb for lb in self._volume_labels if int(lb[1]) in partitions]:
            self._volume_labels.discard(labels)
            self.volume_threshold.remove(*labels)
            for kind in ("target", "sent"):
                self.volume_per_day.remove(*labels, kind)

    def model_in_use(self, old: str | None, new: str | None) -> None:
        _swap(self.model_info, old or NO_MODEL, new or NO_MODEL)

    def contact_model_in_use(self, old: str | None, new: str | None) -> None:
        _swap(self.contact_model_info, old or NO_MODEL, new or NO_MODEL)

    def rulebook_in_use(self, old: str | None, new: str) -> None:
        _swap(self.rulebook_info, old, new)

    def serve(self, host: str, port: int, health: Health | None = None) -> ThreadingHTTPServer:
        """Serve ``/metrics``, and ``/healthz`` and ``/readyz`` from ``health``, in a thread."""
        return serve_http(self.registry, host, port, health)


class LearnerMetrics:
    """``forewarn learn``: what it read, where its watermark stands, what it released."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.records = Counter(
            "forewarn_learner_records_total",
            "Records read, by kind: feature_row, milestone, ignored (another feature set, or "
            "later than the watermark allowed), unreadable",
            ["kind"],
            registry=r,
        )
        self.releases = Counter(
            "forewarn_learner_releases_total",
            "Fits published to the models topic, by verdict (accepted: the challenger serves; "
            "refused: the champion stays)",
            ["verdict"],
            registry=r,
        )
        self.watermark = Gauge(
            "forewarn_learner_watermark_seconds",
            "Stream time every input has reached (epoch seconds): rows mature by it",
            registry=r,
        )
        self.labelled_rows = Gauge(
            "forewarn_learner_labelled_rows", "Labelled rows held for the next fit", registry=r
        )
        self.waiting_rows = Gauge(
            "forewarn_learner_waiting_rows",
            "Rows waiting for their horizon to pass before they are labelled",
            registry=r,
        )
        self.champion_info = Gauge(
            "forewarn_learner_champion_info",
            "The contact-risk model the learner holds as champion (1), by version",
            ["version"],
            registry=r,
        )

    def champion(self, old: str | None, new: str | None) -> None:
        _swap(self.champion_info, old, new)


class FeedbackMetrics:
    """``forewarn feedback``: what it counted, refused, and where each experiment stands.

    The experiment gauges are this worker's share (its ledger partitions): they add up
    across feedback workers, so PromQL can sum them and divide.
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.records = Counter(
            "forewarn_feedback_records_total",
            "Records read, by source (decisions, outcomes, milestones) and result: counted, "
            "duplicate (its id was already in the ledger: a replay or an aborted "
            "transaction), dead_letter",
            ["source", "result"],
            registry=r,
        )
        self.dead_letters = Counter(
            "forewarn_feedback_dead_letters_total",
            "Records sent to the outcomes' dead-letter topic, by reason",
            ["reason"],
            registry=r,
        )
        self.watermark = Gauge(
            "forewarn_feedback_watermark_seconds",
            "Stream time each ledger partition has reached (epoch seconds): windows close by it",
            ["partition"],
            registry=r,
        )
        self.ledgers = Gauge(
            "forewarn_feedback_ledgers", "Customer ledgers held by this worker", registry=r
        )
        self.peer_failures = Counter(
            "forewarn_feedback_peer_failures",
            "Times another feedback worker did not give its tally for a report in time (the "
            "report then names it in missing_workers and counts without its customers)",
            registry=r,
        )
        self.episodes = Gauge(
            "forewarn_feedback_episodes",
            "Experiment episodes by rule, arm and state (matured: the contact window closed)",
            ["rule", "arm", "state"],
            registry=r,
        )
        self.outcome_events = Gauge(
            "forewarn_feedback_outcome_events",
            "Matured episodes followed by the measure's event within its window, by rule, "
            "arm and measure (contact, cancellation, conversion)",
            ["rule", "arm", "measure"],
            registry=r,
        )

        self.coverage = Gauge(
            "forewarn_feedback_support_contacts",
            "Support contacts of the last two weeks on this worker's partitions, by whether an "
            "action reached the customer first within the contact window (anticipated or "
            "missed): proactive coverage is anticipated over both",
            ["state"],
            registry=r,
        )
        for reason in ("malformed_json", "schema_violation", *(p.value for p in OutcomeProblem)):
            self.dead_letters.labels(reason)

    def refresh(self, tally: ExperimentTally, ledgers: int) -> None:
        """Sets the experiment gauges from this worker's tally (on each scrape)."""
        self.ledgers.set(ledgers)
        self.coverage.labels("anticipated").set(tally.anticipated)
        self.coverage.labels("missed").set(tally.contacts - tally.anticipated)
        for key in {*tally.arms, *tally.pending}:
            rule, _channel, arm = key.split("|")
            self.episodes.labels(rule, arm, "pending").set(0)
            self.episodes.labels(rule, arm, "matured").set(0)
            for measure in ("contact", "cancellation", "conversion"):
                self.outcome_events.labels(rule, arm, measure).set(0)
        for key in {*tally.arms, *tally.pending}:
            rule, _channel, arm = key.split("|")
            self.episodes.labels(rule, arm, "pending").inc(tally.pending.get(key, 0))
            counts = tally.arms.get(key)
            if counts is not None:
                self.episodes.labels(rule, arm, "matured").inc(counts.episodes.get("contact", 0))
                for measure, n in counts.events.items():
                    self.outcome_events.labels(rule, arm, measure).inc(n)


_DELIVERY_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_DELIVERY_DELAYS = (0.01, 0.05, 0.1, 0.5, 1, 5, 15, 60, 300, 3600, 4 * 3600, 24 * 3600)


class DeliveryMetrics:
    """``forewarn deliver``: results by destination, latency, retries, what it holds, and
    each destination's circuit breaker. Destination names come from the destinations file
    (a small, fixed set)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.deliveries = Counter(
            "forewarn_deliveries_total",
            "Actions settled per destination, by result: delivered, failed (dead-lettered: "
            "rejected, retries exhausted or unrenderable), expired (expires_at passed first)",
            ["destination", "result"],
            registry=r,
        )
        self.attempts = Counter(
            "forewarn_delivery_attempts_total",
            "HTTP requests per destination, by class: 2xx, 4xx, 5xx, timeout, connection",
            ["destination", "status_class"],
            registry=r,
        )
        self.retries = Counter(
            "forewarn_delivery_retries_total",
            "Attempts scheduled again after a 5xx, 408, 429, timeout or connection error",
            ["destination"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "forewarn_delivery_request_seconds",
            "Time from sending a request to its answer (or its timeout)",
            ["destination"],
            buckets=_DELIVERY_SECONDS,
            registry=r,
        )
        self.delay_seconds = Histogram(
            "forewarn_delivery_delay_seconds",
            "Time from an action's decision (or its not_before, when later) to its delivery",
            ["destination"],
            buckets=_DELIVERY_DELAYS,
            registry=r,
        )
        self.held = Gauge(
            "forewarn_delivery_held",
            "Actions held on this deliverer, by reason: not_before, retry, paused",
            ["reason"],
            registry=r,
        )
        self.breaker = Gauge(
            "forewarn_delivery_breaker_state",
            "Each destination's circuit breaker: 0 closed, 1 open (paused), 2 half-open",
            ["destination"],
            registry=r,
        )
        self.unreadable = Counter(
            "forewarn_delivery_unreadable_actions_total",
            "Records on the actions topic that are not actions (dead-lettered)",
            registry=r,
        )
        # the Kafka side (the same transaction helper as the scoring worker)
        self.transactions = Counter(
            "forewarn_delivery_transactions_total",
            "Transactions (outcomes, dead letters, held actions and offsets), by outcome",
            ["outcome"],
            registry=r,
        )
        self.kafka_retries = Counter(
            "forewarn_delivery_kafka_retries_total",
            "Kafka calls retried because the broker did not answer in time, by operation",
            ["operation"],
            registry=r,
        )
        self.producer_restarts = Counter(
            "forewarn_delivery_producer_restarts_total",
            "Producers replaced after a fatal error (not fencing)",
            registry=r,
        )
        self.up = Gauge("forewarn_delivery_up", "1 while the delivery loop runs", registry=r)
        for outcome in ("committed", "aborted"):
            self.transactions.labels(outcome)
        for reason in ("not_before", "retry", "paused"):
            self.held.labels(reason)

    def destinations(self, names: list[str]) -> None:
        """Start every destination's series at zero (rate() and alerts see them at once)."""
        for name in names:
            for result in ("delivered", "failed", "expired"):
                self.deliveries.labels(name, result)
            self.retries.labels(name)
            self.breaker.labels(name).set(0)

    def serve(self, host: str, port: int, health: Health | None = None) -> ThreadingHTTPServer:
        return serve_http(self.registry, host, port, health)


def _swap(info: Gauge, old: str | None, new: str | None) -> None:
    """An info metric moves from one version to the next (the same one: stays at 1)."""
    if old is not None and old != new:
        with contextlib.suppress(KeyError):  # "none" before anything was set
            info.remove(old)
    if new is not None:
        info.labels(new).set(1)
