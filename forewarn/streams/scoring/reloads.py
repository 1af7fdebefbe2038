"""Between batches, never inside one: a changed churn model, contact-risk model or rulebook
file, and newly learned contact-risk releases, put into the engine; whatever cannot be used is
refused (logged, counted) and the last good one kept."""

from __future__ import annotations

import logging
from datetime import UTC, datetime

from forewarn.models.risk import RiskModel
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
        self._model_file(self.contact)
        self._model_file(self.churn)
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
        self._show_contact(old)

    def _model_file(self, watch: ModelWatch) -> None:
        """A changed churn or contact-risk model file: used, or refused with the last good
        one kept."""
        what = "churn" if watch.target == "churn" else "contact-risk"
        old = watch.version
        found = watch.check()
        if found.refused is not None:
            self.metrics.model_reloads.labels("refused").inc()
            log.error("refused the new %s model, keeping %s: %s", what, old, found.refused)
            return
        if found.loaded is None:
            return
        if watch.target == "churn":
            self.engine.use(churn=found.loaded)
            self.metrics.model_in_use(old, found.loaded.version)
        else:  # the base version: learned ones keep serving from their times
            before = self.engine.contact.latest
            self.engine.use(contact=found.loaded)
            self._show_contact(before)
        self.metrics.model_reloads.labels("loaded").inc()
        log.info("%s model %s from %s replaced %s", what, found.loaded.version,
                 found.loaded.path, old)  # fmt: skip

    def _show_contact(self, before: RiskModel | None) -> None:
        """The contact-risk info metric follows the newest version the engine holds."""
        after = self.engine.contact.latest
        self.metrics.contact_model_in_use(
            None if before is None else before.version, None if after is None else after.version
        )

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
