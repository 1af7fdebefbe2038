"""deploy/delivery/receiver.py, the example endpoint compose delivers to, run for real on
127.0.0.1 and sent requests signed by the Standard Webhooks library Forewarn signs with."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from standardwebhooks.webhooks import Webhook

ROOT = Path(__file__).resolve().parents[2]
RECEIVER = ROOT / "deploy" / "delivery" / "receiver.py"
SECRET = "whsec_Zm9yZXdhcm4tdGVzdC1yZWNlaXZlci1zZWNyZXQ="
ACTION = {"action_id": "act-1", "rule_id": "payment_recovery", "customer_id": "cust-7",
          "channels": ["push", "email"]}  # fmt: skip


@pytest.fixture
def receiver() -> Iterator[tuple[str, subprocess.Popen[str]]]:
    env = {**os.environ, "RECEIVER_SECRET": SECRET, "RECEIVER_HOST": "127.0.0.1",
           "RECEIVER_PORT": "0"}  # fmt: skip
    proc = subprocess.Popen([sys.executable, str(RECEIVER)], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()  # "receiving on http://127.0.0.1:PORT"
        assert first.startswith("receiving on http://127.0.0.1:"), first
        yield first.split()[-1] + "/forewarn", proc
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def post(url: str, body: bytes, wid: str, at: datetime, body_sent: bytes | None = None) -> int:
    signature = Webhook(SECRET).sign(wid, at, body.decode())
    headers = {"webhook-id": wid, "webhook-timestamp": str(int(at.timestamp())),
               "webhook-signature": signature, "Content-Type": "application/json"}  # fmt: skip
    request = urllib.request.Request(url, data=body_sent or body, headers=headers, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as refused:
        return int(refused.code)


def test_the_receiver_acts_once_on_each_signed_action_and_refuses_the_rest(
    receiver: tuple[str, subprocess.Popen[str]],
) -> None:
    url, proc = receiver
    body, now = json.dumps(ACTION).encode(), datetime.now(UTC)
    assert post(url, body, "act-1", now) == 204
    assert post(url, body, "act-1", now) == 204, "a retried delivery is answered again"
    assert post(url, body, "act-2", now, body_sent=body.replace(b"cust-7", b"cust-8")) == 401
    assert post(url, body, "act-3", now - timedelta(minutes=10)) == 401, "too old: a replay"
    assert post(url, body, "act-4", now + timedelta(seconds=30)) == 204
    proc.terminate()
    out, _ = proc.communicate(timeout=10)
    lines = out.splitlines()
    assert lines[0] == "action act-1: payment_recovery for cust-7 by push, email"
    assert lines[1] == "repeat act-1: already acted on"
    assert lines[2:4] == ["refused act-2: bad signature", "refused act-3: bad signature"]
    assert lines[4].startswith("action act-4:")


def test_the_receiver_refuses_to_start_without_a_secret() -> None:
    env = {k: v for k, v in os.environ.items() if k != "RECEIVER_SECRET"}
    done = subprocess.run([sys.executable, str(RECEIVER)], env=env, capture_output=True,
                          text=True, timeout=30, check=False)  # fmt: skip
    assert done.returncode == 2 and "RECEIVER_SECRET" in done.stderr
