"""The stream-learned contact-risk models: the models topic, read whole at start and for new
releases between batches.

The topic is the model history (one record per fit of ``forewarn learn``, accepted or
refused, compacted by fit time), so a worker that restarts reads the same versions and serves
each from the stream time it names: the same model for the same events as before the restart.
A record that is not a usable release is refused (logged, counted) and the rest still served.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition
from pydantic import ValidationError

from forewarn.models.releases import ModelRelease
from forewarn.models.risk import RiskModel
from forewarn.streams.settings import Settings, kafka_config

log = logging.getLogger("forewarn.score")


@dataclass(frozen=True, slots=True)
class Learned:
    release: ModelRelease
    model: RiskModel


@dataclass(slots=True)
class ModelsRead:
    """What one read of the models topic found."""

    accepted: list[Learned] = field(default_factory=list)
    #: releases the learner refused (a champion kept), and records that are not releases
    refused: int = 0
    unreadable: list[str] = field(default_factory=list)


class LearnedModels:
    """Reads the models topic by assignment (no consumer group, nothing committed)."""

    def __init__(self, settings: Settings, friction_version: str) -> None:
        self.topic = settings.topics.models
        self.friction_version = friction_version
        group = f"{settings.group_id}-models"
        self._consumer = Consumer(kafka_config(settings, "restore", **{"group.id": group}))
        self._consumer.assign([TopicPartition(self.topic, 0, OFFSET_BEGINNING)])
        self._missing_logged = False

    def read_all(self, timeout: float = 10.0) -> ModelsRead:
        """Everything the topic holds now (at start: the history so far)."""
        out = ModelsRead()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._read(out, 0.5, until_end=True):
                break
        return out

    def poll(self) -> ModelsRead:
        """New releases since the last read, without waiting."""
        out = ModelsRead()
        self._read(out, 0.0, until_end=False)
        return out

    def _read(self, out: ModelsRead, timeout: float, *, until_end: bool) -> bool:
        """Read what is there (every record of the batch, whatever follows the end of the
        partition in it); True once the end was reached."""
        ended = not until_end
        for msg in self._consumer.consume(500, timeout=timeout):
            err = msg.error()
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    ended = True
                elif err.code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
                    if not self._missing_logged:
                        log.warning("no models topic %s yet: no stream-learned models", self.topic)
                        self._missing_logged = True
                    ended = True
                else:
                    log.warning("reading the models topic: %s", err)
                continue
            value = msg.value()
            if value is None:  # a tombstone: nothing to serve
                continue
            try:
                release = ModelRelease.model_validate_json(value)
                if not release.verdict.accepted:
                    out.refused += 1
                    continue
                model = release.risk_model(self.friction_version)
                out.accepted.append(Learned(release, model))
            except (ValidationError, ValueError) as e:
                what = f"offset {msg.offset()}: {str(e).splitlines()[0]}"
                out.unreadable.append(what)
        return ended

    def close(self) -> None:
        self._consumer.close()
