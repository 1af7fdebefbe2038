"""A rule with a volume target, through the engine (issue 11 §2): nothing during the warm-up,
then about the target a day, a reason that says where the moment ranked, and the same
decisions however the stream is cut into batches."""

from __future__ import annotations

import shutil
import subprocess
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from forewarn.models.config_file import ConfigFileError
from forewarn.models.contracts import DecisionStatus, JourneyEvent
from forewarn.offline.simulator import JourneySimulator
from forewarn.pipeline.clocks import ManualClock
from forewarn.pipeline.harness import Harness
from forewarn.rules.partition_volumes import VOLUME_KEY, PartitionVolumes
from forewarn.rules.rulebook import Rulebook, load_rulebook_text

START = datetime(2026, 4, 1, tzinfo=UTC)
DAYS = 4
TARGET = 40.0  # per 1,000 active customers a day

BOOK = f"""
version: volume-test
rules:
  - id: riskiest_moments
    triggers: {{events: [page_view, product_view, search, error_page, payment_failed,
                         checkout_error, help_center_view, slow_page]}}
    require:
      volume: {{score: friction, per_1000_active_per_day: {TARGET}}}
    action: {{playbook: help, channels: [email, push, in_app, sms], template: t, priority: 50}}
    policies: {{cooldown: 2h}}
"""


def book() -> Rulebook:
    return load_rulebook_text(BOOK, "volume.yaml")


@pytest.fixture(scope="module")
def world() -> tuple[list[JourneyEvent], JourneySimulator]:
    sim = JourneySimulator(1_500, seed=31, start=START, span=timedelta(days=DAYS))
    return list(sim.events()), sim


def run(events: list[JourneyEvent], sim: JourneySimulator, cuts: list[int]) -> Harness:
    h = Harness(rulebook=book(), clock=ManualClock(START))
    h.profiles(sim.profiles())
    i = 0
    while i < len(events):
        n = cuts[i % len(cuts)]
        h.at(events[min(i + n, len(events)) - 1].occurred_at)
        h.feed(*events[i : i + n])
        i += n
    return h


def test_a_volume_rule_sends_about_its_target_after_the_warm_up(
    world: tuple[list[JourneyEvent], JourneySimulator],
) -> None:
    events, sim = world
    h = run(events, sim, [500])
    sent = Counter((a.triggered_at - START).days for a in h.actions)
    active = {
        d: len({e.customer_id for e in events if (e.occurred_at - START).days == d})
        for d in range(DAYS)
    }
    assert sent[0] == 0, "nothing during the first day: the warm-up"
    for day in range(1, DAYS):
        # within 20% (issue 11), though the 2 h cooldown stops about three of four moments
        # that pass, and that share is learned over the same day-long window
        target = TARGET * active[day] / 1000
        assert 0.8 * target <= sent[day] <= 1.2 * target, (day, sent[day], target)
    # the target counts a day's active customers as the measure does: by calendar day
    record = h.stores.partition(0).get_record(VOLUME_KEY)
    assert record is not None
    saved = msgpack.unpackb(record, strict_map_key=False)
    assert saved["riskiest_moments"]["day_active"] == active[DAYS - 1]
    reason = h.actions[0].reasons[-1]
    assert reason.signal == "volume" and "in the top" in reason.detail
    assert "per 1,000 active customers a day" in reason.detail


@settings(max_examples=6, deadline=None)
@given(st.lists(st.integers(1, 900), min_size=1, max_size=6))
def test_a_volume_rule_decides_the_same_however_batches_are_cut(
    world: tuple[list[JourneyEvent], JourneySimulator], cuts: list[int]
) -> None:
    events, sim = world
    events = events[: len(events) // 2]  # two days: the warm-up, then acting
    whole = run(events, sim, [len(events)])
    cut = run(events, sim, cuts)
    key = [(d.action.action_id, d.status) for d in whole.decisions]
    assert [(d.action.action_id, d.status) for d in cut.decisions] == key
    assert any(d.status is DecisionStatus.emitted for d in whole.decisions)
    record = whole.stores.partition(0).get_record(VOLUME_KEY)
    assert record is not None and cut.stores.partition(0).get_record(VOLUME_KEY) == record


def test_a_batch_that_fails_after_deciding_is_decided_again_from_the_stored_thresholds(
    world: tuple[list[JourneyEvent], JourneySimulator], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The engine goes on from the thresholds it last wrote while the store holds those
    bytes; a batch that raised after changing them must not leave them changed."""
    events, sim = world
    events = events[: len(events) // 2]

    def run_failing(fail_at: int | None) -> Harness:
        h = Harness(rulebook=book(), clock=ManualClock(START))
        h.profiles(sim.profiles())
        for n, i in enumerate(range(0, len(events), 700)):
            batch = events[i : i + 700]
            h.at(batch[-1].occurred_at)
            if n == fail_at:
                with monkeypatch.context() as m:
                    m.setattr(h.engine, "_save", _raise)
                    with pytest.raises(RuntimeError):
                        h.feed(*batch)
            h.feed(*batch)
        return h

    decoded: list[bytes | None] = []
    decode = PartitionVolumes.decode.__func__  # type: ignore[attr-defined]

    def counting(cls: type[PartitionVolumes], data: bytes | None, *args: Any) -> Any:
        decoded.append(data)
        return decode(cls, data, *args)

    monkeypatch.setattr(PartitionVolumes, "decode", classmethod(counting))
    clean = run_failing(None)
    assert decoded == [None], "decoded once, at the start: then it goes on from what it wrote"
    redone = run_failing(40)
    assert len(decoded) == 3, "and again after the batch that failed"
    assert [(d.action.action_id, d.status) for d in redone.decisions] == [
        (d.action.action_id, d.status) for d in clean.decisions
    ]
    stored = clean.stores.partition(0).get_record(VOLUME_KEY)
    assert stored is not None and redone.stores.partition(0).get_record(VOLUME_KEY) == stored


def _raise(*_: object) -> None:
    raise RuntimeError("the batch fails after its decisions")


def test_a_volume_needs_a_known_score_and_a_positive_target() -> None:
    bad = BOOK.replace("score: friction", "score: happiness")
    with pytest.raises(ConfigFileError, match="score"):
        load_rulebook_text(bad, "volume.yaml")
    with pytest.raises(ConfigFileError, match="per_1000_active_per_day"):
        load_rulebook_text(BOOK.replace(f"{TARGET}", "0"), "volume.yaml")


def test_the_volume_is_on_the_metrics_and_passes_promtool(
    world: tuple[list[JourneyEvent], JourneySimulator],
) -> None:
    from prometheus_client import generate_latest

    from forewarn.streams.metrics import ScoringMetrics

    events, sim = world
    h = Harness(rulebook=book(), clock=ManualClock(START))
    h.profiles(sim.profiles())
    metrics = ScoringMetrics()
    day = [e for e in events if e.occurred_at < START + timedelta(days=2)]
    for i in range(0, len(day), 500):
        batch = day[i : i + 500]
        h.at(batch[-1].occurred_at)
        metrics.observe_batch(h.feed(*batch), len(batch), 0.1)
    text = generate_latest(metrics.registry).decode()
    samples = {
        (f.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }
    labels = (("partition", "0"), ("rule", "riskiest_moments"))
    assert 0 < samples[("forewarn_volume_threshold", labels)] < 100, "warm: a real threshold"
    target = samples[("forewarn_volume_actions_per_day", (("kind", "target"), *labels))]
    sent = samples[("forewarn_volume_actions_per_day", (("kind", "sent"), *labels))]
    assert target > 0 and sent > 0
    metrics.partitions_gone({0})  # the partition went to another worker
    gone = generate_latest(metrics.registry).decode()
    assert 'partition="0"' not in gone, "its gauges went with it"
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not installed (.ci/run installs Debian's prometheus package)")
    check = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True,
                           text=True, timeout=30, check=False)  # fmt: skip
    assert check.returncode == 0, check.stdout + check.stderr
