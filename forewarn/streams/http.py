"""The HTTP endpoints every Forewarn process serves: ``/metrics`` for Prometheus, ``/healthz``
(liveness) and ``/readyz`` (readiness) for Kubernetes probes."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest


def serve_http(
    registry: CollectorRegistry, host: str, port: int, health: Health | None = None
) -> ThreadingHTTPServer:
    """Serve ``/metrics``, and ``/healthz`` and ``/readyz`` from ``health``, in a thread."""
    checks = health or Health(ready_without_work=True)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path.startswith("/metrics"):
                self._send(200, generate_latest(registry), CONTENT_TYPE_LATEST)
            elif self.path.startswith("/healthz"):
                ok, detail = checks.live()
                self._json(ok, detail)
            elif self.path.startswith("/readyz"):
                ok, detail = checks.ready()
                self._json(ok, detail)
            else:
                self._send(404, b"not found\n", "text/plain")

        def _json(self, ok: bool, detail: dict[str, object]) -> None:
            body = json.dumps({"ok": ok, **detail}).encode() + b"\n"
            self._send(200 if ok else 503, body, "application/json")

        def _send(self, code: int, body: bytes, content_type: str) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass  # scrapes every few seconds would drown the worker's own log

    server = BoundedHTTPServer((host, port), Handler)
    threading.Thread(target=server.serve_forever, name="forewarn-http", daemon=True).start()
    return server


class BoundedHTTPServer(ThreadingHTTPServer):
    """A threading HTTP server that cannot be held open: every connection times out after
    ``REQUEST_TIMEOUT_SECONDS`` without a request, and beyond ``MAX_CONNECTIONS`` open at
    once new ones are closed at once (each open connection holds a thread)."""

    daemon_threads = True
    MAX_CONNECTIONS = 32
    REQUEST_TIMEOUT_SECONDS = 5.0

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        handler.timeout = self.REQUEST_TIMEOUT_SECONDS  # a socket timeout per connection
        super().__init__(address, handler)
        self._slots = threading.BoundedSemaphore(self.MAX_CONNECTIONS)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class Health:
    """Liveness (the loop keeps turning) and readiness (partitions assigned and restored).

    >>> h = Health(liveness_timeout=60)
    >>> h.beat(); h.live()[0], h.ready()[0]
    (True, False)
    >>> h.assigned, h.restoring = {0, 1}, set()
    >>> h.ready()
    (True, {'assigned': [0, 1], 'restoring': []})
    """

    def __init__(self, liveness_timeout: float = 60.0, *, ready_without_work: bool = False) -> None:
        self.liveness_timeout = liveness_timeout
        self.last_beat = time.monotonic()
        self.running = True
        self.assigned: set[int] = set()
        self.restoring: set[int] = set()
        #: why the worker cannot recover by itself (liveness fails while set)
        self.failing: str | None = None
        self._ready_without_work = ready_without_work

    def beat(self) -> None:
        self.last_beat = time.monotonic()

    def live(self) -> tuple[bool, dict[str, object]]:
        idle = time.monotonic() - self.last_beat
        ok = self.running and idle < self.liveness_timeout and self.failing is None
        detail: dict[str, object] = {"seconds_since_loop_turned": round(idle, 3)}
        if self.failing is not None:
            detail["failing"] = self.failing
        return ok, detail

    def ready(self) -> tuple[bool, dict[str, object]]:
        ok = (
            self.running
            and not self.restoring
            and (bool(self.assigned) or self._ready_without_work)
        )
        return ok, {"assigned": sorted(self.assigned), "restoring": sorted(self.restoring)}
