"""forewarn: scores customer-journey events on Kafka and publishes outreach actions.

Commands that talk to Kafka read their connection from FOREWARN_* environment variables
(FOREWARN_BOOTSTRAP_SERVERS=127.0.0.1:9092 by default); forewarn COMMAND --help lists the
settings a command reads, with their defaults. Start with: forewarn demo"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Protocol

from pydantic import ValidationError

from forewarn.cli.deliver import add_deliver_parser
from forewarn.cli.feedback import add_feedback_commands
from forewarn.cli.history import EFFECT_ARGUMENT, add_history_commands, aware_time
from forewarn.errors import ForewarnError
from forewarn.models.contracts import write_json_schemas
from forewarn.offline.worlds import WORLDS
from forewarn.streams.settings import LoggingSettings, settings_help, unknown_variables

if TYPE_CHECKING:  # imported where used: every command would pay for Kafka's client
    from forewarn.streams.settings import Settings

log = logging.getLogger("forewarn")


def cmd_broker(args: argparse.Namespace) -> int:
    from forewarn.streams.broker import free_port, run_broker

    port = free_port() if args.port == 0 else (args.port or 9092)
    print(f"embedded broker on 127.0.0.1:{port} (memory storage; Ctrl-C stops it)", flush=True)
    print(f"export FOREWARN_BOOTSTRAP_SERVERS=127.0.0.1:{port}", flush=True)
    return run_broker(port)


def cmd_topics(args: argparse.Namespace) -> int:
    from forewarn.streams.settings import Settings
    from forewarn.streams.topics import create_topics, format_report, verify_topics

    settings = Settings()
    reports = create_topics(settings) if args.action == "create" else verify_topics(settings)
    print(format_report(reports))
    return 0 if all(r.ok for r in reports) else 1


class _Service(Protocol):
    def serve_http(self, host: str, port: int) -> None: ...
    def run(self) -> None: ...
    def stop(self) -> None: ...


def _serve(make: Callable[[Settings], _Service], settings: Settings) -> int:
    """Run a long-lived process (``score``, ``learn``): settings logged with secrets masked,
    SIGTERM and Ctrl-C heard (the process stops cleanly), its HTTP endpoints served; its
    ForewarnErrors (fenced, unreachable, failed) become exit codes in ``main``."""
    log.info("settings: %s", json.dumps(settings.masked(), default=str))
    service = make(settings)

    def stop(signum: int, _frame: FrameType | None) -> None:
        # the worker finishes the batch in hand and commits; the learner stops between reads
        log.info("received %s: stopping", signal.Signals(signum).name)
        service.stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if settings.http_port:
        service.serve_http(settings.http_host, settings.http_port)
        log.info("metrics, /healthz and /readyz on http://%s:%d", settings.http_host,
                 settings.http_port)  # fmt: skip
    service.run()
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    from forewarn.streams.scoring.worker import ScoringWorker
    from forewarn.streams.settings import Settings

    return _serve(ScoringWorker, Settings())


def cmd_learn(args: argparse.Namespace) -> int:
    from forewarn.streams.learning import LearnerWorker
    from forewarn.streams.settings import Settings

    return _serve(LearnerWorker, Settings())


def cmd_simulate(args: argparse.Namespace) -> int:
    if args.out:
        from forewarn.cli.progress import Progress
        from forewarn.offline.history import write_history

        start = args.start or (datetime.now(UTC) - timedelta(days=args.days)).replace(
            minute=0, second=0, microsecond=0
        )
        writing = Progress(f"writing {args.out}", 0, "events")  # the total is not known
        n, profiles = write_history(
            args.out,
            customers=args.customers,
            days=args.days,
            seed=args.seed,
            start=start,
            world=WORLDS[args.world],
            on_progress=writing.update,
        )
        writing.close(final_line=False)  # the next line says what was written
        print(f"wrote {n:,} events to {args.out} and {args.customers:,} profiles to {profiles}")
        return 0
    from forewarn.streams.settings import Settings
    from forewarn.streams.simulate import publish_live

    settings = Settings()
    stats = publish_live(
        settings,
        customers=args.customers,
        rate=args.rate,
        duration=args.duration,
        seed=args.seed,
        bad_rate=args.bad_rate,
        on_progress=lambda s: print(f"published {s.events:,} events", flush=True),
        world=WORLDS[args.world],
        respond=args.respond,
        effects=dict(args.effect),
    )
    print(
        f"published {stats.profiles:,} profiles and {stats.events:,} events to "
        f"{settings.topics.journey_events}; {sum(stats.bad.values())} malformed records"
    )
    if args.respond:
        prevented = ", ".join(f"{k} {v}" for k, v in stats.prevented.most_common()) or "none"
        print(
            f"customers responded to {stats.actions_received:,} actions; the simulated tool "
            f"reported {stats.outcomes_reported:,} outcomes to {settings.topics.outcomes}; "
            f"events prevented by playbook: {prevented}"
        )
    return 0


def cmd_tail(args: argparse.Namespace) -> int:
    from forewarn.streams.settings import Settings
    from forewarn.streams.tail import tail

    try:
        for line in tail(
            Settings(),
            args.topic,
            from_beginning=args.from_beginning,
            limit=args.max,
            idle_timeout=args.timeout,
            as_json=args.json,
        ):
            print(line, flush=True)
    except KeyboardInterrupt:
        pass
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from forewarn.cli.demo import run_demo

    return run_demo(
        duration=args.duration,
        rate=args.rate,
        customers=args.customers,
        seed=args.seed,
        bad_rate=args.bad_rate,
    )


def cmd_schemas(args: argparse.Namespace) -> int:
    for path in write_json_schemas(args.out):
        print(path)
    return 0


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Epilogs as written (the settings lists); an option's default shown where it has one
    and its help does not already say it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if (
            action.default in (None, False, [], argparse.SUPPRESS)
            or "default" in text
            or not action.option_strings
        ):
            return text
        return f"{text} (default: %(default)s)" if text else "(default: %(default)s)"


def _version() -> str:
    try:
        return version("forewarn")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="forewarn", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--version", action="version", version=f"forewarn {_version()}")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    b = sub.add_parser("broker", help="run the embedded Kafka-compatible broker (development)")
    b.add_argument("--port", type=int, default=None, help="port (default 9092; 0 picks a free one)")
    b.set_defaults(func=cmd_broker)

    t = sub.add_parser("topics", help="create or verify Forewarn's topics")
    t.add_argument(
        "action",
        choices=["create", "verify"],
        help="create: make the topics that are missing (idempotent); verify: report, change "
        "nothing (exit 1 when one is missing or has the wrong partitions)",
    )
    t.set_defaults(func=cmd_topics)

    s = sub.add_parser(
        "score",
        help="run a scoring worker (SIGTERM finishes the batch and exits)",
        epilog=settings_help("score"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    s.set_defaults(func=cmd_score)

    le = sub.add_parser(
        "learn",
        help="learn the contact-risk model from the stream and publish it to the models topic "
        "(FOREWARN_LEARNER__*)",
        epilog=settings_help("learn"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    le.set_defaults(func=cmd_learn)

    sim = sub.add_parser("simulate", help="publish synthetic journeys, or write history")
    sim.add_argument("--customers", type=int, default=1000, help="simulated customers")
    sim.add_argument("--rate", type=float, default=500, help="events per second (live)")
    sim.add_argument("--duration", type=float, default=60, help="seconds (live)")
    sim.add_argument("--seed", type=int, default=7, help="random seed: same seed, same journeys")
    sim.add_argument(
        "--bad-rate", type=float, default=0.0, help="share of malformed records mixed in (live)"
    )
    sim.add_argument(
        "--respond",
        action="store_true",
        help="live: customers respond to the actions the workers publish (some playbooks "
        "prevent support contacts and cancellations), and a simulated marketing tool reports "
        "outcomes to the outcomes topic: the closed loop the feedback plane measures",
    )
    sim.add_argument("--effect", **EFFECT_ARGUMENT)
    sim.add_argument(
        "--out", type=Path, help="write JSON Lines history to this file instead of publishing"
    )
    sim.add_argument("--days", type=float, default=7, help="days of history (with --out)")
    sim.add_argument("--start", type=aware_time, help="history start (default: --days ago)")
    sim.add_argument(
        "--world",
        choices=sorted(WORLDS),
        default="ours",
        help="ours: the world the shipped defaults were tuned on; elsewhere: one they were "
        "not (sparser trouble, contacts within minutes, a late incident, traffic tripling)",
    )
    sim.set_defaults(func=cmd_simulate)

    tl = sub.add_parser("tail", help="pretty-print actions, decisions or dead letters")
    tl.add_argument(
        "topic",
        choices=["actions", "decisions", "dlq"],
        help="outreach actions, every decision (emitted or suppressed), or dead letters",
    )
    tl.add_argument(
        "--from-beginning",
        action="store_true",
        help="show the records already in the topic first (default: only new ones)",
    )
    tl.add_argument("--max", type=int, default=None, help="stop after N records")
    tl.add_argument("--timeout", type=float, default=None, help="stop after S idle seconds")
    tl.add_argument("--json", action="store_true", help="print the raw JSON")
    tl.set_defaults(func=cmd_tail)

    d = sub.add_parser("demo", help="broker + worker + simulated traffic + summary")
    d.add_argument("--duration", type=float, default=60, help="seconds of simulated traffic")
    d.add_argument("--rate", type=float, default=1000, help="events per second")
    d.add_argument("--customers", type=int, default=2000, help="simulated customers")
    d.add_argument("--seed", type=int, default=7, help="random seed: same seed, same journeys")
    d.add_argument(
        "--bad-rate", type=float, default=0.002, help="share of malformed records mixed in"
    )
    d.set_defaults(func=cmd_demo)

    add_history_commands(sub)
    add_feedback_commands(sub)
    add_deliver_parser(sub)

    sc = sub.add_parser("schemas", help="write the contracts' JSON Schemas")
    sc.add_argument("--out", type=Path, default=Path("schemas"), help="directory to write")
    sc.set_defaults(func=cmd_schemas)
    for name, command in sub.choices.items():
        # every command's help ends with the settings it reads and their defaults
        command.formatter_class = HelpFormatter
        if not command.epilog:
            command.epilog = settings_help(name)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        level = LoggingSettings().log_level
    except ValidationError as e:
        print(f"forewarn: invalid settings:\n{e}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    for warning in unknown_variables(os.environ):
        print(f"forewarn: warning: {warning}", file=sys.stderr)
    try:
        rc: int = args.func(args)
    except ForewarnError as e:  # the one place refusals become exit codes
        print(f"forewarn: {e.headline}{e}", file=sys.stderr)
        return e.exit_code
    except ValidationError as e:
        print(f"forewarn: invalid settings:\n{e}", file=sys.stderr)
        return 2
    except OSError as e:
        if e.filename is None:  # not about a file the person named
            raise
        print(f"forewarn: {e.filename}: {e.strerror}", file=sys.stderr)
        return 2
    return rc


if __name__ == "__main__":
    sys.exit(main())
