"""What people read: durations in their units, times with their zone, one vocabulary."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from forewarn.models.contracts import Consent, CustomerProfile, JourneyEvent
from forewarn.offline.replay import replay
from forewarn.rules.policies import ago
from forewarn.rules.rulebook import load_rulebook
from forewarn.streams.tail import format_action, format_decision

T0 = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)


def test_durations_are_in_the_unit_a_person_would_use() -> None:
    assert ago(0.0240236 * 3600) == "86 s"  # was "0.0240236 h"
    assert ago(25 * 60) == "25 min"
    assert ago(6 * 3600) == "6 h"
    assert ago(30 * 3600) == "30 h"
    assert ago(7 * 86400) == "7 days"


def test_tail_prints_times_with_their_zone_and_the_rulebooks_words() -> None:
    events = [
        JourneyEvent(
            event_id=f"e{i}", customer_id="c1", type=t, occurred_at=T0 + timedelta(minutes=i)
        )
        for i, t in enumerate(["error_page", "payment_failed", "payment_failed", "payment_failed"])
    ]
    profile = CustomerProfile(customer_id="c1", consent=Consent(push=True, email=True))
    out = replay(events, [profile], rulebook=load_rulebook(None), churn=None, batch_size=1)
    line = format_action(out.actions[0])
    assert line.startswith("2026-03-02T12:01:00+00:00  c1  payment_recovery -> push")
    assert ", transactional," in line and "service" not in line
    suppressed = next(d for d in out.decisions if d.suppressed_by is not None)
    assert format_decision(suppressed) == (
        "2026-03-02T12:02:00+00:00  c1  payment_recovery  suppressed by cooldown: rule reached "
        "this customer 60 s ago"  # was "0.0166667 h ago", at a time without its zone
    )


def test_a_risks_reason_says_how_much_it_raises_the_odds_not_log_odds() -> None:
    from forewarn.rules.decide import _odds

    assert _odds(1.35) == "odds x3.9"  # was "+1.35 log-odds"
    assert _odds(0.05) == "odds x1.05"
