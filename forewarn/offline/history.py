"""History files for ``train``, ``evaluate``, ``replay`` and ``rules backtest`` (design §6).

Either JSON Lines of JourneyEvents, or CSV / JSON Lines in the user's own shape with a
mapping file::

    columns: {customer_id: user_id, type: event_name, occurred_at: ts, session_id: session}
    timezone: Europe/Berlin        # for timestamps that carry no offset
    aliases: {pay_fail: payment_failed, chat_started: support_contact}

Columns not named in the mapping become the event's properties. A row without an event id
gets one derived from the file and line, so the same file always gives the same ids. A bad
row is an error naming the file, line and column: history is read in full or not at all.

>>> import tempfile, pathlib
>>> d = pathlib.Path(tempfile.mkdtemp())
>>> _ = (d / "h.csv").write_text("user_id,event_name,ts,order\\nu1,pay_fail,2026-01-01 10:00,o1\\n")
>>> _ = (d / "m.yaml").write_text("columns: {customer_id: user_id, type: event_name, "
...     "occurred_at: ts}\\ntimezone: Europe/Berlin\\naliases: {pay_fail: payment_failed}\\n")
>>> (e,) = read_history(d / "h.csv", load_mapping(d / "m.yaml"))
>>> e.type, e.occurred_at.isoformat(), e.properties
('payment_failed', '2026-01-01T10:00:00+01:00', {'order': 'o1'})
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from forewarn.errors import ForewarnError
from forewarn.models.config_file import first_error, load_yaml_file
from forewarn.models.contracts import CustomerProfile, JourneyEvent
from forewarn.offline.simulator import JourneySimulator
from forewarn.offline.worlds import OURS, World
from forewarn.pipeline.codecs import encode


class HistoryError(ForewarnError, ValueError):
    """A history file that cannot be read, naming the file, line and column."""


class Columns(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    customer_id: str = "customer_id"
    type: str = "type"
    occurred_at: str = "occurred_at"
    event_id: str | None = None
    session_id: str | None = None
    value: str | None = None
    channel: str | None = None


class Mapping(BaseModel):
    """How a user's history file maps onto JourneyEvents."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    columns: Columns = Field(default_factory=Columns)
    timezone: str = "UTC"
    aliases: dict[str, str] = Field(default_factory=dict)

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, v: str) -> str:
        ZoneInfo(v)  # raises for an unknown zone
        return v


def load_mapping(path: Path) -> Mapping:
    """A mapping file; ``ConfigFileError`` naming file, line and field when it is wrong."""
    return load_yaml_file(path, Mapping)


#: ``read_history`` reports how far it read (bytes) after this many lines
PROGRESS_EVERY = 20_000


def _rows(
    path: Path, on_progress: Callable[[int], None] | None = None
) -> Iterator[tuple[int, dict[str, Any]]]:
    try:
        yield from _read_rows(path, on_progress)
    except OSError as e:  # missing, a directory, no permission
        raise HistoryError(f"{path}: cannot read: {e.strerror or e}") from e
    except UnicodeDecodeError as e:
        raise HistoryError(f"{path}: not UTF-8 (byte {e.start} of a line)") from e


def _read_rows(
    path: Path, on_progress: Callable[[int], None] | None
) -> Iterator[tuple[int, dict[str, Any]]]:
    if path.suffix.lower() == ".csv":
        with path.open(newline="", encoding="utf-8") as f:
            for i, row in enumerate(csv.DictReader(f), start=2):
                yield i, {k: v for k, v in row.items() if v not in (None, "")}
        return
    read = 0
    with path.open("rb") as f:
        for i, line in enumerate(f, start=1):
            read += len(line)
            if on_progress is not None and i % PROGRESS_EVERY == 0:
                on_progress(read)
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise HistoryError(f"{path}:{i}: not JSON: {e.msg}") from e
            if not isinstance(row, dict):
                raise HistoryError(f"{path}:{i}: not a JSON object")
            yield i, row


def _event(path: Path, line: int, row: dict[str, Any], m: Mapping, tz: ZoneInfo) -> JourneyEvent:
    c = m.columns
    named = {c.customer_id, c.type, c.occurred_at, c.event_id, c.session_id, c.value, c.channel}
    for col in (c.customer_id, c.type, c.occurred_at):
        if row.get(col) in (None, ""):
            raise HistoryError(f"{path}:{line}: {col}: missing")
    raw_time = row[c.occurred_at]
    try:
        at = datetime.fromisoformat(str(raw_time).replace("Z", "+00:00"))
    except ValueError as e:
        raise HistoryError(f"{path}:{line}: {c.occurred_at}: not a timestamp: {raw_time!r}") from e
    if at.tzinfo is None:
        at = at.replace(tzinfo=tz)
    kind = str(row[c.type])
    event_id = row.get(c.event_id) if c.event_id else None
    if not event_id:
        event_id = hashlib.blake2b(f"{path.name}:{line}".encode(), digest_size=12).hexdigest()
    fields: dict[str, Any] = {
        "event_id": str(event_id),
        "customer_id": str(row[c.customer_id]),
        "type": m.aliases.get(kind, kind),
        "occurred_at": at,
        "properties": {k: v for k, v in row.items() if k not in named},
    }
    if c.session_id and row.get(c.session_id):
        fields["session_id"] = str(row[c.session_id])
    if c.value and row.get(c.value) is not None:
        fields["value"] = row[c.value]
    if c.channel and row.get(c.channel):
        fields["channel"] = row[c.channel]
    try:
        return JourneyEvent.model_validate(fields)
    except ValidationError as e:
        raise HistoryError(f"{path}:{line}: {first_error(e)}") from e


def read_history(
    path: Path, mapping: Mapping | None = None, on_progress: Callable[[int], None] | None = None
) -> list[JourneyEvent]:
    """Every event of a history file, in event-time order (ties keep file order).
    ``on_progress``: told the bytes read so far, now and then (JSON Lines)."""
    events: list[JourneyEvent] = []
    if mapping is None and path.suffix.lower() != ".csv":
        for line, row in _rows(path, on_progress):
            try:
                events.append(JourneyEvent.model_validate(row))
            except ValidationError as e:
                raise HistoryError(f"{path}:{line}: {first_error(e)}") from e
    else:
        m = mapping or Mapping()
        tz = ZoneInfo(m.timezone)
        events = [_event(path, line, row, m, tz) for line, row in _rows(path)]
    events.sort(key=lambda e: e.occurred_at)
    return events


def read_profiles(path: Path) -> list[CustomerProfile]:
    """CustomerProfiles from JSON Lines."""
    out = []
    for line, row in _rows(path):
        try:
            out.append(CustomerProfile.model_validate(row))
        except ValidationError as e:
            raise HistoryError(f"{path}:{line}: {first_error(e)}") from e
    return out


def profiles_file_for(history: Path) -> Path:
    """Where the profiles of ``history.jsonl`` live: ``history.profiles.jsonl`` beside it."""
    return history.with_name(history.stem + ".profiles.jsonl")


def profiles_beside(history: Path) -> Path | None:
    """The profiles file next to a history file, if there is one (``simulate --out``)."""
    candidate = profiles_file_for(history)
    return candidate if candidate.exists() else None


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    try:
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    except OSError as e:
        raise HistoryError(f"{path}: cannot read: {e.strerror or e}") from e
    return h.hexdigest()


def read_labels(path: Path) -> dict[str, float]:
    """Churn dates from a labels file (CSV or JSON Lines: ``customer_id``, ``churned_at``)."""
    out: dict[str, float] = {}
    for line, row in _rows(path):
        cid, when = row.get("customer_id"), row.get("churned_at")
        if not cid or not when:
            raise HistoryError(f"{path}:{line}: needs customer_id and churned_at")
        try:
            at = datetime.fromisoformat(str(when).replace("Z", "+00:00"))
        except ValueError as e:
            raise HistoryError(f"{path}:{line}: churned_at: not a timestamp: {when!r}") from e
        if at.tzinfo is None:
            raise HistoryError(f"{path}:{line}: churned_at: give a time zone")
        out[str(cid)] = min(out.get(str(cid), at.timestamp()), at.timestamp())
    return out


def write_history(
    path: Path,
    *,
    customers: int,
    days: float,
    seed: int,
    start: datetime,
    world: World = OURS,
    on_progress: Callable[[int], None] | None = None,
) -> tuple[int, Path]:
    """Write ``days`` of simulated events as JSON Lines, and the profiles beside them;
    ``on_progress`` is told the events written so far, now and then."""
    sim = JourneySimulator(customers, seed, start=start, span=timedelta(days=days), world=world)
    n = 0
    with path.open("wb") as f:
        for e in sim.events():
            f.write(encode(e) + b"\n")
            n += 1
            if on_progress is not None and n % PROGRESS_EVERY == 0:
                on_progress(n)
    profiles = profiles_file_for(path)
    with profiles.open("wb") as f:
        for p in sim.profiles():
            f.write(encode(p) + b"\n")
    return n, profiles
