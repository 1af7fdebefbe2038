"""``forewarn feedback``, ``forewarn why`` and ``forewarn experiments``: the feedback plane
and the two questions people ask it, in a terminal."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from forewarn.errors import ForewarnError
from forewarn.experiments.report import Estimate
from forewarn.streams.settings import settings_help

log = logging.getLogger("forewarn")


class FeedbackUnreachable(ForewarnError):
    headline = "cannot reach the feedback plane: "
    exit_code = 1


def cmd_feedback(args: argparse.Namespace) -> int:
    from faust.worker import Worker

    from forewarn.streams.feedback.app import build_feedback_app
    from forewarn.streams.settings import Settings

    settings = Settings()
    log.info("settings: %s", json.dumps(settings.masked(), default=str))
    plane = build_feedback_app(settings)
    log.info(
        "feedback plane: why, experiments, /healthz, /readyz and /metrics on http://%s:%d",
        settings.feedback_http_host,
        settings.feedback_http_port,
    )
    worker = Worker(
        plane.app,
        loglevel=logging.getLevelName(logging.getLogger().level),
        quiet=True,
        redirect_stdouts=False,
        override_logging=False,
    )
    # runs until SIGTERM or Ctrl-C, then stops the agents and commits what was processed
    worker.execute_from_commandline()
    return 0


def _api_url(args: argparse.Namespace) -> str:
    if args.url:
        return str(args.url).rstrip("/")
    from forewarn.streams.settings import Settings

    s = Settings()
    return f"http://{s.feedback_http_host}:{s.feedback_http_port}"


def api_get(url: str) -> tuple[int, Any]:
    """A feedback-plane API answer: its status and JSON; ``FeedbackUnreachable`` when nothing
    answers."""
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")
    except (urllib.error.URLError, OSError) as e:
        raise FeedbackUnreachable(
            f"{url} ({e}); is `forewarn feedback` running? (FOREWARN_FEEDBACK_HTTP_PORT, --url)"
        ) from e


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def format_why(body: dict[str, Any]) -> str:
    """A customer's decisions, newest first, for a person."""
    lines = [f"customer {body['customer_id']} (stream time {body.get('as_of') or '-'})"]
    if not body["decisions"]:
        lines.append("  no decisions: no rule fired for this customer (within the retention)")
    for d in body["decisions"]:
        verdict = (
            d["status"] if d["status"] != "suppressed" else f"suppressed by {d['suppressed_by']}"
        )
        arm = f", {d['arm']} arm" if d["arm"] else ""
        action = d["action"]
        scores = d["scores"]
        risk = ""
        if scores.get("contact_risk") is not None:
            risk = f", contact risk {scores['contact_risk']:.2f}"
        how = f"{action['playbook']} by {action['channel']}"
        lines.append(
            f"  {d['triggered_at']}  {d['rule_id']}: {verdict}{arm} "
            f"({how}; friction {scores['friction']:.0f}{risk})"
        )
        if d.get("detail"):
            lines.append(f"      {d['detail']}")
        for r in d["reasons"]:
            lines.append(f"      because {r['detail']}")
        if d["outcomes"]:
            told = ", ".join(f"{k} {v}" for k, v in d["outcomes"].items())
            lines.append(f"      reported: {told}")
    if body["milestones"]:
        lines.append(
            "  milestones: " + ", ".join(f"{m['type']} {m['at']}" for m in body["milestones"])
        )
    return "\n".join(lines)


def format_experiments(body: dict[str, Any]) -> str:
    """The experiment report as a table, for a person."""
    lines = [
        f"experiments as of {body.get('as_of') or '-'} (matured episodes; pending in brackets)"
    ]
    missing = body.get("missing_workers") or []
    if missing:
        lines.append(
            f"incomplete: {len(missing)} feedback worker(s) did not answer in time, and the "
            f"customers they own are not counted: {', '.join(missing)}"
        )
    header = (
        f"{'rule':<22} {'treated':>11} {'holdout':>11} {'contact rate t/h':>17} "
        f"{'avoided per 100 actions [95% CI]':>34} {'p (always valid, BH)':>21}"
    )
    lines.append(header)
    for r in body["rules"]:
        c = r["measures"]["contact"]
        avoided = r["contacts_avoided_per_100_actions"]
        ci = Estimate.model_validate(avoided).text(1)
        p = r.get("adjusted_p_value")
        flags = " SAMPLE RATIO MISMATCH" if r["sample_ratio_mismatch"] else ""
        lines.append(
            f"{r['rule_id']:<22} {r['treated']:>5} ({r['pending_treated']:>3}) "
            f"{r['holdout']:>5} ({r['pending_holdout']:>3}) "
            f"{_pct(c['treated_rate']['estimate']):>8}/{_pct(c['holdout_rate']['estimate']):<8} "
            f"{ci:>34} {'-' if p is None else f'{p:.3f}':>21}{flags}"
        )
    cov = body.get("coverage")
    if cov:
        lead = cov["median_lead_minutes"]
        lines.append(
            f"coverage: {cov['anticipated']} of {cov['contacts']} support contacts had an action "
            f"first ({_pct(cov['coverage']['estimate'])}); median lead "
            f"{'-' if lead is None else f'{lead} min'}"
        )
    return "\n".join(lines)


def cmd_why(args: argparse.Namespace) -> int:
    quoted = urllib.parse.quote(args.customer_id, safe="")
    status, body = api_get(f"{_api_url(args)}/customers/{quoted}")
    if status == 404:
        print(f"forewarn: no record of customer {args.customer_id!r}", file=sys.stderr)
        return 1
    print(json.dumps(body, indent=2) if args.json else format_why(body))
    return 0


def cmd_experiments(args: argparse.Namespace) -> int:
    path = "/experiments" + (
        f"/{urllib.parse.quote(args.rule_id, safe='')}" if args.rule_id else ""
    )
    status, body = api_get(_api_url(args) + path)
    if status == 404:
        print(f"forewarn: no assignments for rule {args.rule_id!r} yet", file=sys.stderr)
        return 1
    print(json.dumps(body, indent=2) if args.json else format_experiments(body))
    return 0


def add_feedback_commands(sub: Any) -> None:
    f = sub.add_parser(
        "feedback",
        help="run the feedback plane: experiments against holdouts, the why API "
        "(FOREWARN_FEEDBACK__*, FOREWARN_FEEDBACK_HTTP_PORT)",
        epilog=settings_help("feedback"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    f.set_defaults(func=cmd_feedback)

    url_help = "the feedback plane's API (default http://FOREWARN_FEEDBACK_HTTP_HOST:PORT)"
    w = sub.add_parser("why", help="why a customer did or did not get an action")
    w.add_argument("customer_id")
    w.add_argument("--url", help=url_help)
    w.add_argument("--json", action="store_true", help="print the API's JSON")
    w.set_defaults(func=cmd_why)

    e = sub.add_parser("experiments", help="what outreach changed, per rule, against holdouts")
    e.add_argument("rule_id", nargs="?", help="one rule (default: all)")
    e.add_argument("--url", help=url_help)
    e.add_argument("--json", action="store_true", help="print the API's JSON")
    e.set_defaults(func=cmd_experiments)
