"""The feedback plane's experiment, offline: a history replayed with customers who respond
(``offline/response.py``), read through the same ledgers and report as ``forewarn
feedback`` (``experiments/``), with the simulator's true effects beside the measured ones.

``forewarn evaluate --respond`` prints it; the tests check that the intervals find the
effects the simulator put in, and no effect where it put none.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from pydantic import BaseModel

from forewarn.experiments.ledger import (
    CustomerLedger,
    ExperimentWindows,
    record_decision,
    record_milestone,
    record_outcome,
)
from forewarn.experiments.report import (
    ExperimentReport,
    RuleExperiment,
    experiment_report,
    holdout_shares,
    tally,
)
from forewarn.offline.replay import Replay
from forewarn.offline.response import Responder, TrueEffect
from forewarn.rules.rulebook import Rulebook


class RuleTruth(BaseModel):
    """A rule's measured effect on support contacts next to what the simulator did."""

    rule_id: str
    playbook: str
    #: the simulator's relative reduction of contacts per action of the playbook
    true_contact_effect: float
    true_cancellation_effect: float
    measured: RuleExperiment


class ClosedLoop(BaseModel):
    report: ExperimentReport
    rules: list[RuleTruth]
    #: support contacts and cancellations the actions prevented, by playbook
    prevented: dict[str, int]


def closed_loop_experiment(
    out: Replay,
    rulebook: Rulebook,
    responder: Responder,
    end: datetime,
    windows: ExperimentWindows | None = None,
) -> ClosedLoop:
    """The experiment report for a replay made with ``responder``, as of ``end``."""
    w = windows or ExperimentWindows()
    ledgers: dict[str, CustomerLedger] = {}

    def ledger(cid: str) -> CustomerLedger:
        return ledgers.setdefault(cid, CustomerLedger(customer_id=cid))

    for d in out.decisions:
        record_decision(ledger(d.customer_id), d, w)
    for m in out.milestones:
        record_milestone(ledger(m.customer_id), m, w)
    for a in out.actions:
        for o in responder.outcomes(a):
            record_outcome(ledger(a.customer_id), o, w)
    report = experiment_report(
        tally(((led, end) for led in ledgers.values()), w), holdout_shares(rulebook)
    )
    playbooks = {r.id: r.action.playbook for r in rulebook.rules}
    truths = []
    for measured in report.rules:
        playbook = playbooks.get(measured.rule_id, "?")
        effect = responder.effects.get(playbook, TrueEffect())
        truths.append(
            RuleTruth(
                rule_id=measured.rule_id,
                playbook=playbook,
                true_contact_effect=effect.contact,
                true_cancellation_effect=effect.cancellation,
                measured=measured,
            )
        )
    return ClosedLoop(report=report, rules=truths, prevented=dict(responder.prevented))


def format_closed_loop(loop: ClosedLoop) -> str:
    """Per rule: episodes, the contact rate's risk ratio (treated over holdout) with its
    interval, and the per-action truth the simulator used."""
    lines = [
        "what outreach changed (support contacts within 24 h, treated vs held out; the "
        "simulator's truth per action beside it)",
        f"{'rule':<20}{'playbook':<18}{'treated':>8}{'holdout':>8}"
        f"{'contact risk ratio [95% CI]':>30}{'true ratio per action':>23}",
    ]
    rows: Sequence[RuleTruth] = loop.rules
    for r in rows:
        rr = r.measured.measures["contact"].risk_ratio
        lines.append(
            f"{r.rule_id:<20}{r.playbook:<18}{r.measured.treated:>8}{r.measured.holdout:>8}"
            f"{rr.text():>30}"
            f"{f'{1 - r.true_contact_effect:.2f}':>23}"
        )
    lines.append(
        "a risk ratio of 0.70 means 30% fewer contacts; the measured ratio is diluted "
        "where the treated arm's actions did not go out (a cooldown, the budget, another "
        "rule won)"
    )
    return "\n".join(lines)
