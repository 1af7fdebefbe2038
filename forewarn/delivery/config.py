"""Destinations (``FOREWARN_DELIVERY_PATH``) and the deliverer's tuning
(``FOREWARN_DELIVERY__*``), as frozen pydantic models.

The smallest file that works:

>>> book = parse_destinations('''
... destinations:
...   - name: crm-webhook
...     url: http://127.0.0.1:8080/forewarn
...     secret_env: FOREWARN_WEBHOOK_SECRET
...     match: {rules: [payment_recovery]}
... ''', environ={"FOREWARN_WEBHOOK_SECRET": "whsec_c2VjcmV0LXNlY3JldC1zZWNyZXQ="})
>>> [d.name for d in book.destinations], book.destinations[0].timeout_seconds
(['crm-webhook'], 10.0)
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, StringConstraints
from standardwebhooks.webhooks import Webhook

from forewarn.errors import ForewarnError
from forewarn.models.config_file import ConfigFileError, load_yaml_text, read_text_file
from forewarn.models.contracts import OutreachAction

#: a destination's name: a metric label and the ``source`` of its outcomes
DestinationName = Annotated[
    str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
]
_HEADER_NAME = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")
#: headers Forewarn sets itself (Standard Webhooks and the body's framing)
RESERVED_HEADERS = frozenset(
    {"webhook-id", "webhook-timestamp", "webhook-signature", "content-length", "host"}
)


class DeliveryConfigError(ForewarnError):
    """The destinations file cannot be used (exit code 2)."""

    headline = "refused destinations file:\n"


class Match(BaseModel):
    """Which actions go to a destination: every list given must contain the action's value
    (an empty or absent list matches everything)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    rules: tuple[str, ...] = ()
    playbooks: tuple[str, ...] = ()
    channels: tuple[str, ...] = ()

    def accepts(self, action: OutreachAction) -> bool:
        return (
            (not self.rules or action.rule_id in self.rules)
            and (not self.playbooks or action.playbook in self.playbooks)
            and (not self.channels or action.channel.value in self.channels)
        )


class Destination(BaseModel):
    """One tool that receives actions over HTTP."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: DestinationName
    url: Annotated[str, StringConstraints(pattern=r"^https?://[^\s]+$")]
    method: Literal["POST", "PUT"] = "POST"
    #: the environment variable holding the Standard Webhooks secret (``whsec_...``);
    #: absent: requests are not signed (a tool's own API authenticates by header instead)
    secret_env: str | None = None
    secret: SecretStr | None = Field(default=None, exclude=True)
    match: Match = Field(default_factory=Match)
    #: fixed headers (no templates: nothing from the file runs)
    headers: dict[str, str] = Field(default_factory=dict)
    #: header -> environment variable holding its value (API keys, ``Bearer ...``)
    headers_env: dict[str, str] = Field(default_factory=dict)
    content_type: str = "application/json"
    #: a Jinja2 template (sandboxed) of the request body over ``action`` (its JSON fields) and
    #: ``destination`` (the name); absent: the action's JSON as published
    body: str | None = None
    timeout_seconds: float = Field(default=10.0, gt=0, le=300)


class DestinationBook(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    destinations: tuple[Destination, ...] = Field(min_length=1)

    def matching(self, action: OutreachAction) -> list[Destination]:
        return [d for d in self.destinations if d.match.accepts(action)]


def parse_destinations(
    text: str, *, environ: Mapping[str, str] | None = None, where: str = "<text>"
) -> DestinationBook:
    """The destinations of a YAML text, secrets read from ``environ``; every problem is a
    ``DeliveryConfigError`` naming the field."""
    from forewarn.delivery.request import compile_body

    env = os.environ if environ is None else environ
    try:  # the project's YAML loader: each problem with its line, column and field
        book = load_yaml_text(text, DestinationBook, where)
    except ConfigFileError as e:
        raise DeliveryConfigError(str(e)) from e
    names = [d.name for d in book.destinations]
    if len(set(names)) != len(names):
        raise DeliveryConfigError(f"{where}: destination names must be unique: {names}")
    resolved = []
    for d in book.destinations:
        problems = []
        for h in (*d.headers, *d.headers_env):
            if not _HEADER_NAME.match(h) or h.lower() in RESERVED_HEADERS:
                problems.append(f"header {h!r} is not allowed")
        headers = dict(d.headers)
        for h, var in d.headers_env.items():
            if var not in env:
                problems.append(f"headers_env.{h}: environment variable {var} is not set")
            else:
                headers[h] = env[var]
        secret = None
        if d.secret_env is not None:
            value = env.get(d.secret_env)
            if not value:
                problems.append(f"secret_env: environment variable {d.secret_env} is not set")
            else:
                try:
                    Webhook(value)
                except Exception:
                    problems.append(f"secret_env: {d.secret_env} is not a whsec_... secret")
                secret = SecretStr(value)
        if d.body is not None:
            try:
                compile_body(d.body)
            except Exception as e:
                problems.append(f"body: not a usable template: {e}")
        if problems:
            raise DeliveryConfigError(f"{where}: destination {d.name!r}: " + "; ".join(problems))
        resolved.append(d.model_copy(update={"headers": headers, "secret": secret}))
    return DestinationBook(destinations=tuple(resolved))


def load_destinations(path: Path, environ: Mapping[str, str] | None = None) -> DestinationBook:
    try:
        text = read_text_file(path)
    except ConfigFileError as e:
        raise DeliveryConfigError(str(e)) from e
    return parse_destinations(text, environ=environ, where=str(path))


class DeliveryConfig(BaseModel):
    """``forewarn deliver``'s tuning (``FOREWARN_DELIVERY__*``)."""

    model_config = ConfigDict(frozen=True)

    #: the deliverer's consumer group on the actions topic (and its transactional id's prefix)
    group_id: str = "forewarn-delivery"
    #: actions read per batch
    batch_size: int = Field(default=200, ge=1, le=10_000)
    #: requests in flight at once
    concurrency: int = Field(default=64, ge=1, le=1024)
    #: attempts per action and destination before it fails for good (dead letter)
    max_attempts: int = Field(default=8, ge=1, le=100)
    #: the first retry waits about this long; each next one twice as long (with jitter)
    backoff_seconds: float = Field(default=1.0, gt=0)
    backoff_max_seconds: float = Field(default=300.0, gt=0)
    #: a ``Retry-After`` longer than this is cut to it
    retry_after_max_seconds: float = Field(default=3600.0, gt=0)
    #: consecutive failed attempts that pause a destination (circuit breaker opens)
    breaker_failures: int = Field(default=5, ge=1)
    #: a paused destination gets one trial request after this long
    breaker_cooldown_seconds: float = Field(default=30.0, gt=0)
    #: ``/metrics``, ``/healthz`` and ``/readyz`` (0: off); beside a scoring worker's 9464
    http_port: int = Field(default=9466, ge=0, le=65535)
