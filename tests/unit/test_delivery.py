"""The pure core of ``forewarn deliver``: destinations, timing, retries, the breaker, the
signed request. No broker, no network."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from forewarn.delivery.config import DeliveryConfigError, load_destinations, parse_destinations
from forewarn.delivery.policy import (
    BreakerState,
    CircuitBreaker,
    Verdict,
    backoff,
    retry_after,
    timing,
    verdict,
)
from forewarn.delivery.request import RenderError, body_of, build_request
from forewarn.models.contracts import OutreachAction, Reason, Scores

SECRET = "whsec_" + "c2VjcmV0LWZvci10aGUtZGVsaXZlcnktdGVzdHM="
ENV = {"FOREWARN_WEBHOOK_SECRET": SECRET, "CIO_AUTH": "Bearer k"}
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def action(**over: object) -> OutreachAction:
    base: dict[str, object] = dict(
        action_id="a1", customer_id="c1", rule_id="payment_recovery",
        playbook="payment_recovery", channel="email", priority=90, template="t",
        reasons=[Reason(signal="payment_failed", contribution=30, detail="failed payments: 2")],
        scores=Scores(friction=60), trigger_event_id="e1", triggered_at=T0, decided_at=T0,
        expires_at=T0 + timedelta(hours=4), rulebook_version="r", model_version="m",
        attributes={"order_id": "o-9"},
    )  # fmt: skip
    return OutreachAction.model_validate({**base, **over})


def book(text: str):  # type: ignore[no-untyped-def]
    return parse_destinations(text, environ=ENV)


MINIMAL = """
destinations:
  - name: crm-webhook
    url: http://127.0.0.1:8080/forewarn
    secret_env: FOREWARN_WEBHOOK_SECRET
    match: {rules: [payment_recovery, checkout_assist]}
"""


def test_the_smallest_file_works_and_matches_by_rule() -> None:
    b = book(MINIMAL)
    assert [d.name for d in b.matching(action())] == ["crm-webhook"]
    assert b.matching(action(rule_id="retention_offer")) == []


def test_match_by_playbook_and_channel_all_lists_must_agree() -> None:
    b = book(
        "destinations:\n"
        "  - {name: a, url: 'http://x/', match: {playbooks: [payment_recovery], channels: [sms]}}\n"
        "  - {name: b, url: 'http://x/'}\n"
    )
    assert [d.name for d in b.matching(action())] == ["b"]
    assert [d.name for d in b.matching(action(channel="sms"))] == ["a", "b"]


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("destinations: []", "destinations"),
        ("destinations: [{name: a, url: 'ftp://x/'}]", "url"),
        ("destinations: [{name: a, url: 'http://x/', secret_env: NOPE}]", "NOPE is not set"),
        ("destinations: [{name: a, url: 'http://x/', headers: {webhook-id: x}}]", "not allowed"),
        ("destinations: [{name: a, url: 'http://x/', body: '{{ action.'}]", "template"),
        ("destinations: [{name: a, url: 'http://x/', colour: red}]", "colour"),
        ("destinations: [{name: a, url: 'http://x/'}, {name: a, url: 'http://y/'}]", "unique"),
        ("- just a list", "mapping"),
    ],
)
def test_a_bad_file_is_refused_naming_what_is_wrong(text: str, says: str) -> None:
    with pytest.raises(DeliveryConfigError, match=says):
        book(text)


def test_headers_from_the_environment_and_a_secret_that_is_not_whsec() -> None:
    b = book("destinations: [{name: a, url: 'http://x/', headers_env: {Authorization: CIO_AUTH}}]")
    assert b.destinations[0].headers == {"Authorization": "Bearer k"}
    with pytest.raises(DeliveryConfigError, match="whsec"):
        parse_destinations(
            "destinations: [{name: a, url: 'http://x/', secret_env: S}]", environ={"S": "%%%"}
        )


def test_the_signed_request_verifies_and_a_changed_body_does_not() -> None:
    d = book(MINIMAL).destinations[0]
    req = build_request(action(), d, datetime.now(UTC))
    assert req.headers["webhook-id"] == "a1"
    assert Webhook(SECRET).verify(req.body, req.headers)["action_id"] == "a1"
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(req.body.replace(b"c1", b"c2"), req.headers)


def test_a_template_renders_the_action_fields() -> None:
    d = book(
        "destinations: [{name: a, url: 'http://x/', body: "
        '\'{"ids": [{{ action.customer_id|tojson }}], '
        '"order": {{ action.attributes.order_id|tojson }}}\'}]'
    ).destinations[0]
    assert json.loads(body_of(action(), d)) == {"ids": ["c1"], "order": "o-9"}


@pytest.mark.parametrize(
    "template",
    [
        "{{ action.__class__.__mro__ }}",  # the sandbox refuses internals
        "{{ action.no_such_field|tojson }}",  # strict: a typo fails loudly
        "{{ ''.__class__.__subclasses__() }}",
        "{% set _ = action.update({'x': 1}) %}{}",  # immutable
        "not json {{ action.action_id }}",  # the content type is JSON: checked
    ],
)
def test_a_template_cannot_reach_code_and_must_render_json(template: str) -> None:
    d = book("destinations: [{name: a, url: 'http://x/'}]").destinations[0]
    with pytest.raises(RenderError):
        body_of(action(), d.model_copy(update={"body": template}))


def test_timing() -> None:
    a = action(not_before=T0 + timedelta(hours=1))
    assert timing(a.not_before, a.expires_at, T0).kind == "hold"
    assert timing(a.not_before, a.expires_at, T0 + timedelta(hours=1)).kind == "now"
    assert timing(a.not_before, a.expires_at, a.expires_at).kind == "expired"
    with pytest.raises(ValueError, match="timezone"):
        timing(None, a.expires_at, datetime(2026, 1, 1))  # noqa: DTZ001


@given(
    nb=st.none() | st.integers(-10_000, 10_000),
    ex=st.integers(-10_000, 10_000),
    now=st.integers(-10_000, 10_000),
)
def test_never_before_not_before_nor_at_or_after_expires_at(
    nb: int | None, ex: int, now: int
) -> None:
    not_before = None if nb is None else T0 + timedelta(seconds=nb)
    expires = T0 + timedelta(seconds=ex)
    at = T0 + timedelta(seconds=now)
    t = timing(not_before, expires, at)
    if t.kind == "now":
        assert at < expires and (not_before is None or at >= not_before)
    elif t.kind == "hold":
        assert t.until == not_before and t.until is not None and at < t.until < expires


def test_verdicts() -> None:
    assert verdict(200) is Verdict.delivered
    assert {verdict(s) for s in (500, 502, 503, 504, 408, 429, None)} == {Verdict.retry}
    assert {verdict(s) for s in (400, 401, 403, 404, 410, 422, 302)} == {Verdict.rejected}


def test_retry_after_forms() -> None:
    assert retry_after("120", T0) == 120.0
    assert retry_after("Sun, 01 Mar 2026 12:01:00 GMT", T0) == 60.0
    assert retry_after("Sun, 01 Mar 2026 11:00:00 GMT", T0) == 0.0
    assert retry_after(None, T0) is None and retry_after("soon", T0) is None


@given(
    attempt=st.integers(1, 60),
    r=st.floats(0, 1, exclude_max=True),
    asked=st.none() | st.floats(0, 10_000),
)
def test_backoff_is_bounded_grows_and_honours_retry_after(
    attempt: int, r: float, asked: float | None
) -> None:
    w = backoff(attempt, 1.0, 300.0, lambda: r, asked, asked_cap=3600.0)
    ceiling = min(300.0, 2.0 ** (attempt - 1))
    if asked is None:
        assert ceiling / 2 - 1e-6 <= w <= ceiling + 1e-6
        # the same random draw never waits less after more failures
        assert backoff(attempt + 1, 1.0, 300.0, lambda: r) >= w
    else:
        assert w >= min(asked, 3600.0) - 1e-6


def test_the_breaker_opens_pauses_probes_and_closes() -> None:
    now = [T0]
    b = CircuitBreaker(3, timedelta(seconds=30), lambda: now[0])
    for _ in range(2):
        assert b.allow()
        b.record(False)
    assert b.state is BreakerState.closed
    b.record(True)  # a success resets the count
    for _ in range(3):
        b.record(False)
    assert b.state.value == "open" and not b.allow()
    assert b.resumes_at() == T0 + timedelta(seconds=30)
    now[0] += timedelta(seconds=29)
    assert not b.allow()
    now[0] += timedelta(seconds=1)
    assert b.allow() and b.state.value == "half_open"
    assert not b.allow()  # one trial at a time
    b.record(False)  # the trial failed: paused again, from now
    assert b.state.value == "open" and b.resumes_at() == now[0] + timedelta(seconds=30)
    now[0] += timedelta(seconds=30)
    assert b.allow()
    b.record(True)
    assert b.state.value == "closed" and b.allow()


EXAMPLES = sorted((Path(__file__).parents[2] / "deploy" / "delivery").glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_the_example_destinations_load_and_render_json(path: Path) -> None:
    env = {
        "FOREWARN_WEBHOOK_SECRET": SECRET,
        "EXAMPLE_RECEIVER_SECRET": SECRET,  # compose.yaml's
        "CUSTOMERIO_AUTHORIZATION": "Bearer k",
        "ZENDESK_AUTHORIZATION": "Basic k",
    }
    b = load_destinations(path, environ=env)
    for d in b.destinations:
        for a in (action(), action(channel="phone", priority=95), action(attributes={})):
            json.loads(build_request(a, d, T0).body)  # JSON, whatever the action holds


def test_the_example_templates_carry_the_documented_fields() -> None:
    env = {"CUSTOMERIO_AUTHORIZATION": "Bearer k", "ZENDESK_AUTHORIZATION": "Basic k"}
    root = Path(__file__).parents[2] / "deploy" / "delivery"
    [cio] = load_destinations(root / "customerio-broadcast.yaml", environ=env).destinations
    body = json.loads(body_of(action(playbook="retention_offer"), cio))
    assert body["ids"] == ["c1"] and body["data"]["forewarn_action_id"] == "a1"
    assert cio.headers["Authorization"] == "Bearer k"
    [zd] = load_destinations(root / "zendesk-ticket.yaml", environ=env).destinations
    ticket = json.loads(body_of(action(channel="phone", priority=95), zd))["ticket"]
    assert ticket["priority"] == "urgent" and ticket["external_id"] == "a1"
    assert "failed payments: 2" in ticket["comment"]["body"]
