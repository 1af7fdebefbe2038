"""Forewarn's Prometheus metrics: the one module that defines them.

Names follow design section 6: prefix ``forewarn_``, base units, ``_total`` counters, and
never a customer or event id as a label (every label has a small, fixed set of values).
Each worker has its own registry so several can live in one process (tests, the demo).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from forewarn.streams.scoring.engine import BatchResult

_BATCH_SIZES = (1, 10, 50, 100, 250, 500, 1000, 2500, 5000)
_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
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

    def observe_batch(self, result: BatchResult, n_records: int, seconds: float) -> None:
        stats = result.stats
        self.batch_size.observe(n_records)
        self.batch_seconds.observe(seconds)
        for t, n in stats.events_by_type.items():
            self.events.labels(t).inc(n)
        for reason, n in stats.dead_letters_by_reason.items():
            self.dead_letters.labels(reason).inc(n)
        if stats.duplicates:
            self.duplicates.inc(stats.duplicates)
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

    def serve(self, host: str, port: int) -> None:
        start_http_server(port, addr=host, registry=self.registry)
