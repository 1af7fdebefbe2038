"""Between batches, never inside one: a changed churn model, contact-risk model or rulebook
file, and newly learned contact-risk releases, put into the engine; whatever cannot be used is
refused (logged, counted) and the last good one kept."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from forewarn.pipeline.engine import ScoringEngine
from forewarn.streams.metrics import ScoringMetrics
from forewarn.streams.scoring.learned import LearnedModels, ModelsRead
from forewarn.streams.scoring.watch import ModelWatch, RulebookWatch

log = logging.getLogger("forewarn.score")


class Reloads:
    def __init__(
        self,
        engine: ScoringEngine,
        churn: ModelWatch,
        contact: ModelWatch,
        rules: RulebookWatch,
        metrics: ScoringMetrics,
    ) -> None:
        self.engine = engine
        self.churn = churn
        self.contact = contact
        self.rules = rules
        self.metrics = metrics
        self.learned: LearnedModels | None = None
        latest = engine.contact.latest
        metrics.contact_model_in_use(None, None if latest is None else latest.version)

    def read_learned(self, learned: LearnedModels, reached: float) -> None:
        """Start serving the models topic: every release so far, then new ones at each
        check. ``reached``: the furthest stream time the worker has scored."""
        self.learned = learned
        self._serve(learned.read_all(), reached)

    def check(self, reached: float) -> None:
        if self.learned is not None:
            self._serve(self.learned.poll(), reached)
        self._contact_file()
        self._churn_file()
        self._rulebook_file()

    def close(self) -> None:
        if self.learned is not None:
            self.learned.close()

    def _serve(self, read: ModelsRead, reached: float) -> None:
        """Serve newly learned releases, each from the stream time it names."""
        assert self.learned is not None
        engine, metrics = self.engine, self.metrics
        for what in read.unreadable:
            metrics.learned_models.labels("unreadable").inc()
            log.error("refused a record of the models topic %s: %s", self.learned.topic, what)
        held = {v.model.version for v in engine.contact.served}
        old = engine.contact.latest
        for learned in read.accepted:
            model, release = learned.model, learned.release
            if model.version in held:
                continue
            since = release.serves_from.timestamp()
            engine.serve(model, since)
            metrics.learned_models.labels("served").inc()
            if reached > since:
                metrics.learned_models.labels("late").inc()
                log.warning(
                    "contact-risk model %s serves from %s, but this worker has scored events up "
                    "to %s: the events between were scored by the previous version",
                    model.version, release.serves_from.isoformat(),
                    datetime.fromtimestamp(reached, UTC).isoformat(),
                )  # fmt: skip
            log.info("contact-risk model %s (%s) serves from %s", model.version,
                     release.verdict.reason, release.serves_from.isoformat())  # fmt: skip
        new = engine.contact.latest
        metrics.contact_model_in_use(
            None if old is None else old.version, None if new is None else new.version
        )

    def _contact_file(self) -> None:
        contact = self.contact.check()
        if contact.refused is not None:
            self.metrics.model_reloads.labels("refused").inc()
            log.error("refused the new contact-risk model, keeping %s: %s",
                      self.contact.version, contact.refused)  # fmt: skip
        elif contact.loaded is not None:
            old = self.engine.contact.latest
            self.engine.use(contact=contact.loaded)
            self.metrics.model_reloads.labels("loaded").inc()
            self.metrics.contact_model_in_use(
                None if old is None else old.version, contact.loaded.version
            )
            log.info("contact-risk model %s from %s", contact.loaded.version, contact.loaded.path)

    def _churn_file(self) -> None:
        old = self.churn.version
        model = self.churn.check()
        if model.refused is not None:
            self.metrics.model_reloads.labels("refused").inc()
            log.error("refused the new churn model, keeping %s: %s", old, model.refused)
        elif model.loaded is not None:
            self.engine.use(churn=model.loaded)
            self.metrics.model_reloads.labels("loaded").inc()
            self.metrics.model_in_use(old, model.loaded.version)
            log.info("churn model %s replaced %s", model.loaded.version, old)

    def _rulebook_file(self) -> None:
        old = self.engine.rulebook.version
        book = self.rules.check()
        if book.refused is not None:
            self.metrics.rulebook_reloads.labels("refused").inc()
            log.error("refused the changed rulebook, keeping %s:\n%s", old, book.refused)
        elif book.loaded is not None:
            self.engine.use(rulebook=book.loaded)
            self.metrics.rulebook_reloads.labels("loaded").inc()
            self.metrics.rulebook_in_use(old, book.loaded.version)
            log.info("rulebook %s (%d rules) replaced %s", book.loaded.version,
                     len(book.loaded.rules), old)  # fmt: skip
