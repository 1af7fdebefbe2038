"""The risk models and the rulebook: loaded at start, and again between batches when they change.

A change is a different resolved path (a symlink pointed elsewhere) or a different size or
modification time. A changed file that cannot be used, for whatever reason (not UTF-8, not
YAML, failing validation, unreadable, vanished while being read, a model that does not match
its card), is *refused*: ``Reload.refused`` carries the reason, and the caller keeps the last
good one. A refused file is not tried again until it changes again.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

from forewarn.models.risk import (
    CARD_FILE,
    MODEL_FILE,
    RiskModel,
    Target,
    default_model_path,
    load_risk_model,
)
from forewarn.rules.rulebook import Rulebook, default_rulebook_path, load_rulebook

log = logging.getLogger("forewarn.score")

T = TypeVar("T")


def file_stamp(*paths: Path) -> tuple[object, ...]:
    """What tells a changed file: resolved path (symlinks), modification time and size."""
    out: list[object] = []
    for f in paths:
        try:
            st = f.stat()
            out += [f.resolve(), (st.st_mtime_ns, st.st_size)]
        except OSError:  # missing, or vanished between two calls
            out += [f, None]
    return tuple(out)


@dataclass(frozen=True, slots=True)
class Reload(Generic[T]):
    """The outcome of looking at a watched file: nothing new, a new one, or a refusal."""

    loaded: T | None = None
    refused: str | None = None


class ModelWatch:
    """A risk model's artifact directory (``none``: no model). Without a path: the shipped
    churn model, and no contact-risk model (the stream learner provides that one)."""

    def __init__(self, path: Path | None, friction_version: str, target: Target = "churn") -> None:
        self.path = path
        self.friction_version = friction_version
        self.target: Target = target
        self.version: str | None = None
        self._stamp: tuple[object, ...] | None = None

    def _where(self) -> Path | None:
        if self.path is not None and str(self.path) == "none":
            return None
        if self.path is None and self.target == "contact":
            return None
        return self.path or default_model_path()

    @staticmethod
    def _stamp_of(where: Path) -> tuple[object, ...]:
        return file_stamp(where, where / CARD_FILE, where / MODEL_FILE)

    def load_first(self) -> RiskModel | None:
        """The model to start with; ``ArtifactError`` stops the worker before it starts."""
        where = self._where()
        if where is None:
            return None
        self._stamp = self._stamp_of(where)
        model = load_risk_model(where, self.friction_version, self.target)
        self.version = model.version
        log.info("%s-risk model %s from %s", self.target, model.version, where)
        return model

    def check(self) -> Reload[RiskModel]:
        where = self._where()
        if where is None:
            return Reload()
        stamp = self._stamp_of(where)
        if stamp == self._stamp:
            return Reload()
        self._stamp = stamp
        try:
            model = load_risk_model(where, self.friction_version, self.target)
        except Exception as e:  # whatever the files hold, the worker keeps its last model
            return Reload(refused=f"{type(e).__name__}: {e}")
        self.version = model.version
        return Reload(loaded=model)


class RulebookWatch:
    """The rulebook file (default: the one shipped in ``forewarn/rules/default.yaml``)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path or default_rulebook_path()
        self._stamp = file_stamp(self.path)
        self.book = load_rulebook(self.path)

    def check(self) -> Reload[Rulebook]:
        stamp = file_stamp(self.path)
        if stamp == self._stamp:
            return Reload()
        self._stamp = stamp
        try:
            book = load_rulebook(self.path)
        except Exception as e:  # whatever the file holds, the worker keeps its last rulebook
            return Reload(refused=str(e))
        self.book = book
        return Reload(loaded=book)
