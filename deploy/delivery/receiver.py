"""A receiver for Forewarn's signed webhooks, with nothing but the Python standard library:
what your marketing or support tool's endpoint has to do, in about a hundred lines.

It checks each request as Standard Webhooks says (https://www.standardwebhooks.com):

- the signature: HMAC-SHA256 of ``{webhook-id}.{webhook-timestamp}.{body}`` with the secret
  (the base64 after ``whsec_``), one of the space-separated ``v1,<base64>`` in
  ``webhook-signature``; a mismatch is answered 401 and the action is not used;
- the timestamp: more than five minutes away from the receiver's clock is refused (401), so a
  captured request cannot be replayed later;
- the id: ``webhook-id`` is the action id, and a delivery retried after a timeout repeats it.
  A repeat is answered 204 again and not acted on twice.

Then it prints the action (rule, customer, channels) and answers 204: Forewarn records the
delivery as ``delivered``. Run it beside `forewarn deliver` (deploy/compose.yaml does):

    RECEIVER_SECRET=whsec_... RECEIVER_PORT=8080 python deploy/delivery/receiver.py

``RECEIVER_HOST`` (default 127.0.0.1) is the address it listens on.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import sys
import time
from collections import OrderedDict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from threading import Lock

#: a request more than this far from the receiver's clock is refused (the standard's value)
TOLERANCE_SECONDS = 5 * 60
#: how many action ids are remembered for dropping repeats
REMEMBERED = 100_000


def signature_ok(secret: str, headers: dict[str, str], body: bytes, now: float) -> bool:
    """Whether ``body`` carries a valid Standard Webhooks signature made with ``secret``.

    >>> key = base64.b64encode(b"k" * 24).decode()
    >>> mac = hmac.new(b"k" * 24, b"a1.1000.{}", hashlib.sha256).digest()
    >>> signed = {"webhook-id": "a1", "webhook-timestamp": "1000",
    ...           "webhook-signature": "v1," + base64.b64encode(mac).decode()}
    >>> signature_ok("whsec_" + key, signed, b"{}", now=1010), signature_ok(
    ...     "whsec_" + key, signed, b"{ }", now=1010), signature_ok("whsec_" + key, signed,
    ...     b"{}", now=2000)
    (True, False, False)
    """
    wid, stamp = headers.get("webhook-id", ""), headers.get("webhook-timestamp", "")
    if not wid or not stamp.isdigit() or abs(now - int(stamp)) > TOLERANCE_SECONDS:
        return False
    key = base64.b64decode(secret.removeprefix("whsec_"))
    expected = hmac.new(key, f"{wid}.{stamp}.".encode() + body, hashlib.sha256).digest()
    for candidate in headers.get("webhook-signature", "").split():
        version, _, sig = candidate.partition(",")
        try:
            given = base64.b64decode(sig, validate=True)
        except ValueError:
            continue
        if version == "v1" and hmac.compare_digest(given, expected):
            return True
    return False


class Seen:
    """The action ids acted on, the oldest forgotten first."""

    def __init__(self, size: int = REMEMBERED) -> None:
        self._ids: OrderedDict[str, None] = OrderedDict()
        self._size = size
        self._lock = Lock()

    def first_time(self, wid: str) -> bool:
        with self._lock:
            if wid in self._ids:
                return False
            self._ids[wid] = None
            if len(self._ids) > self._size:
                self._ids.popitem(last=False)
            return True


def handler(secret: str, seen: Seen) -> type[BaseHTTPRequestHandler]:
    class Receive(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            headers = {k.lower(): v for k, v in self.headers.items()}
            if not signature_ok(secret, headers, body, time.time()):
                # said before answering, as below: once answered, the sender's next request
                # may be handled (and said) first, on another thread
                print(f"refused {headers.get('webhook-id', '?')}: bad signature", flush=True)
                self._answer(401)
                return
            wid = headers["webhook-id"]
            if seen.first_time(wid):
                action = json.loads(body)
                print(
                    f"action {wid}: {action.get('rule_id')} for {action.get('customer_id')} "
                    f"by {', '.join(action.get('channels', []))}",
                    flush=True,
                )
            else:
                print(f"repeat {wid}: already acted on", flush=True)
            self._answer(204)

        def _answer(self, status: int) -> None:
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass  # one line per action above is enough

    return Receive


def main() -> int:
    secret = os.environ.get("RECEIVER_SECRET", "")
    if not secret.startswith("whsec_"):
        print("RECEIVER_SECRET must be the destination's secret, whsec_...", file=sys.stderr)
        return 2
    host = os.environ.get("RECEIVER_HOST", "127.0.0.1")
    port = int(os.environ.get("RECEIVER_PORT", "8080"))
    server = ThreadingHTTPServer((host, port), handler(secret, Seen()))
    print(f"receiving on http://{host}:{server.server_port}", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
