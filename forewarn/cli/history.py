"""``forewarn train``, ``evaluate``, ``replay`` and ``rules``: the commands that read history
files and need no broker."""

from __future__ import annotations

import argparse
import json
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from forewarn.cli.progress import Progress, Reported
from forewarn.models.config_file import ConfigFileError
from forewarn.models.contracts import CustomerProfile, JourneyEvent
from forewarn.models.risk import RiskModel
from forewarn.rules.rulebook import Rulebook

if TYPE_CHECKING:  # imported where used: every command would pay for scikit-learn
    from forewarn.models.friction import FrictionConfig
    from forewarn.offline.experiment import ClosedLoop
    from forewarn.offline.response import TrueEffect
    from forewarn.pipeline.learner import LearnerSettings


def _history(args: argparse.Namespace) -> tuple[list[JourneyEvent], list[CustomerProfile] | None]:
    from forewarn.offline.history import load_mapping, profiles_beside, read_history, read_profiles

    mapping = load_mapping(args.mapping) if args.mapping else None
    size = args.events.stat().st_size if args.events.is_file() else 0
    reading = Progress(f"reading {args.events}", size, "MB", shown=lambda b: f"{b / 1e6:,.1f}")
    events = read_history(args.events, mapping, on_progress=reading.update)
    reading.close(final_line=False)  # the next line says what was read
    profiles_path = getattr(args, "profiles", None) or profiles_beside(args.events)
    profiles = read_profiles(profiles_path) if profiles_path else None
    print(
        f"read {len(events):,} events from {args.events}"
        + (f" and {len(profiles):,} profiles from {profiles_path}" if profiles is not None else "")
        + (" (no profiles: every channel counts as consented)" if profiles is None else ""),
        file=sys.stderr,
    )
    return events, profiles


def _model(path: Path | None) -> RiskModel | None:
    from forewarn.models.risk import default_model_path, load_risk_model

    if path is not None and str(path) == "none":
        return None
    chosen = path or default_model_path()
    return load_risk_model(chosen) if (chosen / "card.json").exists() or path else None


def _contact_model(path: Path | None) -> RiskModel | None:
    from forewarn.models.risk import load_risk_model

    return None if path is None else load_risk_model(path, target="contact")


def _learning() -> LearnerSettings:
    """The stream learner as ``forewarn learn`` would run (``FOREWARN_LEARNER__*``)."""
    from forewarn.models.friction import FrictionConfig
    from forewarn.streams.settings import Settings

    return Settings().learner.learner_settings(FrictionConfig.default().version)


def cmd_train(args: argparse.Namespace) -> int:
    from forewarn.models.friction import FrictionConfig
    from forewarn.models.risk import save_risk_model
    from forewarn.offline.history import file_sha256, read_labels
    from forewarn.offline.training import (
        CHURN_EVENT,
        default_version,
        event_snapshot_dataset,
        fit_churn_model,
        period_of,
        snapshot_dataset,
    )

    events, _ = _history(args)
    friction = FrictionConfig.default()
    if args.target == "contact":
        return _train_contact(args, events, friction)
    labels = read_labels(args.labels) if args.labels else None
    folding = _folding(events)
    if args.snapshot_hours == 0:  # at events: the moments the stream scores
        data = event_snapshot_dataset(
            events, friction=friction, horizon_days=args.horizon_days, churned_at=labels,
            on_progress=folding.update,
        )  # fmt: skip
    else:
        data = snapshot_dataset(
            events,
            friction=friction,
            horizon_days=args.horizon_days,
            every_hours=args.snapshot_hours,
            churned_at=labels,
            on_progress=folding.update,
        )
    folding.close()
    source = f"labels file {args.labels.name}" if args.labels else f"first {CHURN_EVENT} event"
    linear, card = fit_churn_model(
        data,
        source_sha256=file_sha256(args.events),
        period=period_of(events),
        events=len(events),
        version=args.version or default_version(),
        horizon_days=args.horizon_days,
        every_hours=args.snapshot_hours,
        friction_version=friction.version,
        label_definition=(
            f"churned ({source}) within {args.horizon_days:g} days after "
            + (
                "an event (snapshots at events)"
                if args.snapshot_hours == 0
                else f"a snapshot taken every {args.snapshot_hours:g} h"
            )
        ),
    )
    save_risk_model(args.out, linear, card)
    h = card.held_out
    print(
        f"model {card.model_version} -> {args.out}\n"
        f"  {len(data.y):,} snapshots of {card.training_data.customers:,} customers, "
        f"{card.class_balance.rate:.1%} churn within {args.horizon_days:g} days\n"
        f"  held out ({h.rows:,} rows): ROC AUC {h.roc_auc:.3f}, PR AUC {h.pr_auc:.3f}, "
        f"Brier {h.brier:.4f}; at threshold {h.operating_threshold:.2f}: precision "
        f"{h.precision:.1%}, recall {h.recall:.1%}"
    )
    return 0


def _folding(events: list[JourneyEvent]) -> Progress:
    """Progress of building the training rows: every event goes through the stream's state
    code first, the longest part of ``train`` after reading the history."""
    return Progress("computing training rows", len(events), "events")


def _train_contact(
    args: argparse.Namespace, events: list[JourneyEvent], friction: FrictionConfig
) -> int:
    from forewarn.models.risk import save_risk_model
    from forewarn.offline.contact_risk import contact_card, contact_dataset, fit_and_judge
    from forewarn.offline.history import file_sha256
    from forewarn.offline.training import period_of

    horizon = args.horizon_hours * 3600
    folding = _folding(events)
    rows = contact_dataset(events, horizon=horizon, friction=friction, on_progress=folding.update)
    folding.close()
    start, end = period_of(events)
    cut = args.holdout_from or start + (end - start) * 0.8
    ev = fit_and_judge(rows, cut=cut.timestamp(), horizon=horizon)
    version = args.version or f"contact-{datetime.now(UTC):%Y%m%d-%H%M%S}"
    card = contact_card(
        ev, version=version, horizon=horizon, friction_version=friction.version,
        source_sha256=file_sha256(args.events), events=len(events),
        customers=len({e.customer_id for e in events}), period=(start, end),
    )  # fmt: skip
    save_risk_model(args.out, ev.linear, card)
    h = card.held_out
    print(
        f"model {version} -> {args.out}\n"
        f"  {ev.train_rows:,} moments before {cut.isoformat()}, {ev.base_rate:.1%} of the "
        f"later ones followed by a support contact within {args.horizon_hours:g} h\n"
        f"  after the cut ({h.rows:,} moments): ROC AUC {h.roc_auc:.3f} (friction alone "
        f"{ev.friction_roc_auc:.3f}), PR AUC {h.pr_auc:.3f} ({ev.friction_pr_auc:.3f}); at "
        f"threshold {h.operating_threshold:.2f}: precision {h.precision:.1%}, recall "
        f"{h.recall:.1%}"
    )
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from forewarn.offline.evaluate import evaluate, format_report
    from forewarn.rules.rulebook import load_rulebook

    churn, rulebook = _model(args.model), load_rulebook(args.rules)  # refuse before reading
    contact = _contact_model(args.contact_model)
    learning = None if args.no_learning else _learning()
    events, profiles = _history(args)
    progress = Progress("replaying", len(events), "events")
    report = evaluate(
        Reported(events, progress),
        profiles,
        rulebook=rulebook,
        churn=churn,
        window_hours=args.window_hours,
        plot=args.plot,
        contact=contact,
        learning=learning,
        measure_from=args.measure_from,
    )
    progress.close()
    data = report.to_json()
    print(format_report(report))
    if args.respond:
        loop = _closed_loop(events, profiles, rulebook, churn, contact, dict(args.effect))
        data["closed_loop"] = None if loop is None else loop.model_dump(mode="json")
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(json.dumps(data, indent=2) + "\n")
    print(f"\nreport: {args.report}" + (f", plot: {args.plot}" if args.plot else ""))
    return 0


def _closed_loop(
    events: list[JourneyEvent],
    profiles: list[CustomerProfile] | None,
    rulebook: Rulebook,
    churn: RiskModel | None,
    contact: RiskModel | None,
    effects: dict[str, TrueEffect],
) -> ClosedLoop | None:
    """The history again, with customers who respond to the actions: what the outreach
    changed against the holdouts, next to the simulator's truth."""
    from forewarn.offline.experiment import closed_loop_experiment, format_closed_loop
    from forewarn.offline.replay import replay
    from forewarn.offline.response import TRUE_EFFECTS, Responder

    if rulebook.holdout_percent == 0 and not any(
        r.policies.holdout_percent for r in rulebook.rules
    ):
        print("\n--respond: the rulebook holds nobody out, so there is nothing to compare "
              "with (set holdout_percent, globally or per rule)")  # fmt: skip
        return None
    responder = Responder({**TRUE_EFFECTS, **effects})
    progress = Progress("replaying with customers who respond", len(events), "events")
    # small batches: an action reaches its customer before the next few minutes of events
    out = replay(Reported(events, progress), profiles, rulebook=rulebook, churn=churn,
                 contact=contact, responder=responder, batch_size=50)  # fmt: skip
    progress.close()
    loop = closed_loop_experiment(out, rulebook, responder, max(e.occurred_at for e in events))
    print("\n" + format_closed_loop(loop))
    return loop


def cmd_replay(args: argparse.Namespace) -> int:
    from forewarn.offline.replay import replay, write_replay
    from forewarn.rules.rulebook import load_rulebook

    churn, rulebook = _model(args.model), load_rulebook(args.rules)  # refuse before reading
    contact = _contact_model(args.contact_model)
    learning = None if args.no_learning or contact is not None else _learning()
    events, profiles = _history(args)
    learner = None
    if learning is not None:
        from forewarn.pipeline.learner import ContactLearner

        learner = ContactLearner(learning)
    progress = Progress("replaying", len(events), "events")
    out = replay(Reported(events, progress), profiles, rulebook=rulebook, churn=churn,
                 contact=contact, learner=learner)  # fmt: skip
    progress.close()
    actions, decisions, models = write_replay(out, args.out)
    accepted = sum(r.verdict.accepted for r in out.releases)
    print(
        f"{out.events:,} events -> {len(out.actions):,} actions ({actions}), "
        f"{len(out.decisions):,} decisions ({decisions}), {out.dead_letters} dead letters"
        + (f"; {len(out.releases)} fits, {accepted} accepted ({models})" if models else "")
    )
    return 0


def cmd_rules(args: argparse.Namespace) -> int:
    from forewarn.rules.rulebook import default_rulebook_path, load_rulebook

    if args.path is None:
        args.path = default_rulebook_path()
    try:
        book = load_rulebook(args.path)
    except ConfigFileError as e:
        print(f"{args.path}: {len(e.problems)} problem(s)", file=sys.stderr)
        for p in e.problems:
            print(f"  {p}", file=sys.stderr)
        return 1
    if args.action == "lint":
        rules = f"{len(book.rules)} rule" + ("" if len(book.rules) == 1 else "s")
        print(f"{args.path}: rulebook {book.version}, {rules}, no problems")
        return 0
    if args.action == "test":
        return _rules_test(args, book)
    return _rules_backtest(args, book)


def _rules_test(args: argparse.Namespace, book: Rulebook) -> int:
    from forewarn.offline.rule_cases import cases_beside, run_cases

    cases = args.cases or cases_beside(args.path)
    if not cases.exists():
        print(f"forewarn: no test cases: {cases} does not exist", file=sys.stderr)
        return 2
    results = run_cases(book, cases, _model(args.model))
    for r in results:
        print(f"{'ok  ' if r.ok else 'FAIL'} {r.name}")
        for line in r.failures:
            print(f"       {line}")
    failed = sum(not r.ok for r in results)
    print(f"\n{len(results) - failed} passed, {failed} failed ({cases})")
    return 1 if failed else 0


def _rules_backtest(args: argparse.Namespace, book: Rulebook) -> int:
    from forewarn.offline.backtest import backtest, format_backtest
    from forewarn.rules.rulebook import load_rulebook

    if args.events is None:
        print("rules backtest needs --events HISTORY", file=sys.stderr)
        return 2
    churn = _model(args.model)
    deployed = load_rulebook(args.deployed) if args.deployed else None
    events, profiles = _history(args)
    result = backtest(book, events, profiles, churn=churn, deployed=deployed)
    if args.report:
        args.report.write_text(json.dumps(result.to_json(), indent=2) + "\n")
    print(format_backtest(result))
    return 0


def aware_time(text: str) -> datetime:
    at = datetime.fromisoformat(text)
    if at.tzinfo is None:
        raise argparse.ArgumentTypeError("give a time zone, e.g. 2026-01-01T00:00:00+00:00")
    return at


def _effect(text: str) -> tuple[str, TrueEffect]:
    from forewarn.offline.response import true_effect

    try:
        return true_effect(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from e


#: ``--effect`` for the commands with customers who respond (``simulate``, ``evaluate``)
EFFECT_ARGUMENT: dict[str, Any] = {
    "type": _effect,
    "action": "append",
    "default": [],
    "metavar": "PLAYBOOK=CONTACT[:CANCELLATION]",
    "help": "with --respond: a playbook's true effect, the share of support contacts (and "
    "cancellations) one action prevents, e.g. payment_recovery=0.4 (repeat it; default: "
    "the simulator's own, two playbooks with none)",
}


def add_history_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    def history_args(p: argparse.ArgumentParser) -> None:
        p.add_argument("--events", type=Path, required=True, help="history: JSON Lines or CSV")
        p.add_argument("--mapping", type=Path, help="column mapping YAML for your own format")
        p.add_argument(
            "--profiles",
            type=Path,
            help="CustomerProfiles as JSON Lines (default: HISTORY.profiles.jsonl if present)",
        )

    tr = sub.add_parser("train", help="train the churn-risk or the contact-risk model from history")
    history_args(tr)
    tr.add_argument("--out", type=Path, required=True, help="artifact directory to write")
    tr.add_argument(
        "--target",
        choices=["churn", "contact"],
        default="churn",
        help="churn: cancellation within --horizon-days; contact: a support contact within "
        "--horizon-hours after an event (default: churn)",
    )
    tr.add_argument("--labels", type=Path, help="churn dates: CSV/JSONL customer_id,churned_at")
    tr.add_argument("--horizon-days", type=float, default=14.0, help="churn (default 14)")
    tr.add_argument(
        "--snapshot-hours",
        type=float,
        default=24.0,
        help="churn: a snapshot of every customer this often (default 24); 0: at events",
    )
    tr.add_argument(
        "--horizon-hours", type=float, default=24.0, help="contact (default 24; 0.5: in-session)"
    )
    tr.add_argument(
        "--holdout-from",
        type=aware_time,
        help="contact: fit on what comes before this time, measure on what follows "
        "(default: the last fifth of the history)",
    )
    tr.add_argument("--version", help="model version (default: <target>-<timestamp>)")
    tr.set_defaults(func=cmd_train)

    ev = sub.add_parser("evaluate", help="replay history offline and measure proactive service")
    history_args(ev)
    ev.add_argument("--model", type=Path, help="artifact directory ('none': friction only)")
    ev.add_argument("--rules", type=Path, help="rulebook (default: the shipped one)")
    ev.add_argument("--report", type=Path, required=True, help="JSON report to write")
    ev.add_argument("--plot", type=Path, help="PNG plot to write")
    ev.add_argument(
        "--window-hours",
        type=float,
        default=24.0,
        help="a support contact counts as anticipated when an action came at most this many "
        "hours before it (and a moment is labelled by a contact within it)",
    )
    ev.add_argument(
        "--contact-model",
        type=Path,
        help="a contact-risk model trained offline (forewarn train --target contact): scores "
        "the rulebook's contact risk, compared with the stream-learned one",
    )
    ev.add_argument(
        "--no-learning",
        action="store_true",
        help="no stream learner in the replay (FOREWARN_LEARNER__* configure it otherwise)",
    )
    ev.add_argument(
        "--respond",
        action="store_true",
        help="replay again with simulated customers who respond to the actions, and report "
        "what the outreach changed against the rulebook's holdouts (the closed loop)",
    )
    ev.add_argument("--effect", **EFFECT_ARGUMENT)
    ev.add_argument(
        "--from",
        dest="measure_from",
        type=aware_time,
        help="measure from this time on; earlier events only build state and train (a "
        "time-ordered split)",
    )
    ev.set_defaults(func=cmd_evaluate)

    rp = sub.add_parser("replay", help="run history through the streaming code path to files")
    history_args(rp)
    rp.add_argument("--out", type=Path, required=True, help="directory for the JSON Lines")
    rp.add_argument("--model", type=Path, help="artifact directory ('none': friction only)")
    rp.add_argument("--rules", type=Path, help="rulebook (default: the shipped one)")
    rp.add_argument(
        "--contact-model",
        type=Path,
        help="a contact-risk model trained offline, instead of learning one in the replay",
    )
    rp.add_argument(
        "--no-learning",
        action="store_true",
        help="no stream learner in the replay (by default one runs, as `forewarn learn` "
        "would, and its fits are written to DIR/models.jsonl)",
    )
    rp.set_defaults(func=cmd_replay)

    ru = sub.add_parser("rules", help="lint, test or backtest a rulebook")
    ru.add_argument("action", choices=["lint", "test", "backtest"])
    ru.add_argument(
        "path",
        type=Path,
        nargs="?",
        help="the rulebook YAML (default: the shipped one, forewarn/rules/default.yaml)",
    )
    ru.add_argument("--cases", type=Path, help="test cases (default: PATH's .tests.yaml)")
    ru.add_argument("--events", type=Path, help="history for backtest")
    ru.add_argument("--mapping", type=Path, help="column mapping YAML for your own format")
    ru.add_argument("--profiles", type=Path, help="CustomerProfiles as JSON Lines")
    ru.add_argument("--deployed", type=Path, help="the rulebook in production, to compare")
    ru.add_argument("--model", type=Path, help="churn model directory ('none': friction only)")
    ru.add_argument("--report", type=Path, help="write the backtest as JSON too")
    ru.set_defaults(func=cmd_rules)
