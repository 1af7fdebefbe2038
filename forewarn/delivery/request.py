"""The HTTP request for one action at one destination: its body (the action's JSON, or a
sandboxed Jinja2 template over the action's fields) and its Standard Webhooks headers.

``webhook-id`` is the action id, so a receiver that keeps the ids it has seen drops a repeat;
``webhook-signature`` lets it check the sender (``standardwebhooks.Webhook(secret).verify``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any

from jinja2 import StrictUndefined
from jinja2.sandbox import ImmutableSandboxedEnvironment
from standardwebhooks.webhooks import Webhook

from forewarn.delivery.config import Destination
from forewarn.models.contracts import OutreachAction


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    url: str
    headers: dict[str, str]
    body: bytes


class RenderError(Exception):
    """The destination's template cannot render this action (a missing field, say)."""


def _environment() -> ImmutableSandboxedEnvironment:
    # The sandbox refuses attribute access to internals and any call the template could use
    # to reach code; immutable: a template cannot change the values it is given. Undefined
    # names are errors, not empty strings: a typo fails the first action, loudly.
    env = ImmutableSandboxedEnvironment(undefined=StrictUndefined, autoescape=False)
    env.policies["json.dumps_kwargs"] = {"sort_keys": True, "ensure_ascii": False}
    return env


_ENV = _environment()


@lru_cache(maxsize=256)
def compile_body(source: str) -> Any:
    """A body template, compiled (syntax errors raise here, at load)."""
    return _ENV.from_string(source)


def body_of(action: OutreachAction, destination: Destination) -> bytes:
    """The request body: the action's JSON, or the destination's template rendered."""
    if destination.body is None:
        return action.model_dump_json().encode()
    fields = action.model_dump(mode="json")
    try:
        text: str = compile_body(destination.body).render(
            action=fields, destination=destination.name
        )
    except Exception as e:  # UndefinedError, SecurityError, TypeError from a filter...
        raise RenderError(f"{type(e).__name__}: {e}") from e
    if destination.content_type.endswith("json"):
        try:
            json.loads(text)
        except ValueError as e:
            raise RenderError(f"the template did not render JSON: {e}") from e
    return text.encode()


def build_request(action: OutreachAction, destination: Destination, now: datetime) -> Request:
    """The signed request (``RenderError`` when the body cannot be rendered)."""
    body = body_of(action, destination)
    headers = {**destination.headers, "Content-Type": destination.content_type}
    headers["webhook-id"] = action.action_id
    headers["webhook-timestamp"] = str(int(now.timestamp()))
    if destination.secret is not None:
        signer = Webhook(destination.secret.get_secret_value())
        headers["webhook-signature"] = signer.sign(action.action_id, now, body.decode())
    return Request(destination.method, destination.url, headers, body)
