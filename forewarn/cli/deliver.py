"""``forewarn deliver``: send outreach actions to the tools that act on them, as signed
webhooks (Standard Webhooks), honouring ``not_before`` and ``expires_at``."""

from __future__ import annotations

import argparse
import json
import logging
import signal
from types import FrameType
from typing import Any

from forewarn.errors import ForewarnError
from forewarn.streams.settings import settings_help

log = logging.getLogger("forewarn")


class NoDestinations(ForewarnError):
    """``FOREWARN_DELIVERY_PATH`` is not set (exit code 2)."""


def cmd_deliver(args: argparse.Namespace) -> int:
    from forewarn.delivery.config import load_destinations
    from forewarn.streams.delivery.worker import DeliveryWorker
    from forewarn.streams.settings import Settings

    settings = Settings()
    if settings.delivery_path is None:
        raise NoDestinations(
            "FOREWARN_DELIVERY_PATH is not set: name a destinations file (YAML); "
            "deploy/delivery/ has examples"
        )
    book = load_destinations(settings.delivery_path)
    log.info("settings: %s", json.dumps(settings.masked(), default=str))
    log.info("destinations: %s", ", ".join(f"{d.name} ({d.url})" for d in book.destinations))
    if args.check:
        print(f"{settings.delivery_path}: {len(book.destinations)} destinations, usable")
        return 0
    worker = DeliveryWorker(settings, book)

    def stop(signum: int, _frame: FrameType | None) -> None:
        log.info("received %s: stopping", signal.Signals(signum).name)
        worker.stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    port = settings.delivery.http_port
    if port:
        worker.serve_http(settings.http_host, port)
        log.info("metrics, /healthz and /readyz on http://%s:%d", settings.http_host, port)
    worker.run()
    return 0


def add_deliver_parser(sub: Any) -> None:
    d = sub.add_parser(
        "deliver",
        help="send outreach actions to webhooks (signed, deferred until not_before, never "
        "after expires_at, retried) and report outcomes (FOREWARN_DELIVERY_PATH)",
        epilog=settings_help("deliver"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    d.add_argument(
        "--check",
        action="store_true",
        help="check the destinations file (and that its secrets are set), then exit",
    )
    d.set_defaults(func=cmd_deliver)
