"""The volume target (issue 11 §2): a threshold that holds N actions per 1,000 active customers
per day through traffic changes, score shifts and policies that stop part of what passes it."""

from __future__ import annotations

import json
import math
import random
from collections import Counter

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from forewarn.rules.partition_volumes import PartitionVolumes
from forewarn.rules.volume import DAY_CAP, AdaptiveThreshold, VolumeTarget

DAY = 86_400.0
TARGET = VolumeTarget(per_1000_active_per_day=40, warm_up_seconds=DAY)


def day_of_traffic(
    rng: random.Random,
    day: int,
    customers: int,
    moments_each: int,
    incident: bool,
    diurnal: bool = False,
) -> list[tuple[float, int, float]]:
    """(time, customer, score) for one day, in time order. In an incident a third of the
    moments score high (trouble everywhere), as after the clickstream's mid-history outage.
    ``diurnal``: as people visit, four in ten customers stay away on a given day, and the
    rest come mostly from morning to late evening, most of all after work."""
    out = []
    for c in range(customers):
        if diurnal and rng.random() < 0.4:
            continue
        for _ in range(moments_each):
            score = rng.betavariate(2, 8)
            if incident and rng.random() < 1 / 3:
                score = rng.betavariate(6, 3)
            at = _time_of_visit(rng) if diurnal else rng.random() * DAY
            out.append((day * DAY + at, c, score))
    return sorted(out)


def _time_of_visit(rng: random.Random) -> float:
    while True:  # rejection sampling: a little at night, a midday bump, an evening peak
        h = rng.random() * 24
        w = 0.1 + math.exp(-(((h - 19) / 4) ** 2)) + 0.6 * math.exp(-(((h - 12) / 3) ** 2))
        if rng.random() < w / 1.7:
            return h * 3600


def run(
    days: list[tuple[int, int, bool]], suppressed: float = 0.0, seed: int = 7, diurnal: bool = False
) -> tuple[Counter[int], dict[int, float], dict[int, float], AdaptiveThreshold]:
    """Feed ``days`` of (customers, moments each, incident); actions sent per day, the target
    per day (N per 1,000 of that day's active customers), the threshold at each day's end,
    and the controller."""
    rng = random.Random(seed)
    t = AdaptiveThreshold(TARGET, start=0.0)
    sent: Counter[int] = Counter()
    active: Counter[int] = Counter()
    thresholds: dict[int, float] = {}
    last: dict[int, float] = {}
    for day, (customers, each, incident) in enumerate(days):
        for at, c, score in day_of_traffic(rng, day, customers, each, incident, diurnal):
            # active at a customer's first event of each calendar day, as the engine marks it
            if c not in last or at // DAY > last[c] // DAY:
                t.customer_active(at)
                active[day] += 1
            last[c] = at
            if t.observe(at, score) and rng.random() >= suppressed:
                t.sent(at)
                sent[day] += 1
        thresholds[day] = t.threshold
    target = {d: active[d] * TARGET.per_1000_active_per_day / 1000 for d in range(len(days))}
    return sent, target, thresholds, t


def off_target(sent: Counter[int], target: dict[int, float], from_day: int) -> dict[int, float]:
    return {d: round(sent[d] / target[d], 2) for d in target if d >= from_day}


def assert_on_target(sent: Counter[int], target: dict[int, float], from_day: int) -> None:
    """Every day from ``from_day`` within 20% of its target (issue 11's bound)."""
    ratios = off_target(sent, target, from_day)
    assert all(0.8 <= r <= 1.2 for r in ratios.values()), ratios


def test_nothing_is_sent_during_the_warm_up() -> None:
    sent, _, _, _ = run([(5_000, 4, False)] * 2)
    assert sent[0] == 0 and sent[1] > 0


def test_the_volume_holds_through_three_times_the_traffic() -> None:
    # traffic triples over four days (the clickstream's did over its history), then stays
    days = [(5_000, 4, False)] * 3 + [(round(5_000 * 3 ** (d / 4)), 4, False) for d in (1, 2, 3)]
    days += [(15_000, 4, False)] * 3
    sent, target, _, _ = run(days)
    assert_on_target(sent, target, from_day=1)


def test_the_volume_holds_when_the_scores_shift() -> None:
    # an incident from day 4: trouble everywhere, so far more moments score high; the day's
    # pace and budget hold its first day too (the histograms alone sent 2.2x, then 1.4x)
    days = [(5_000, 4, False)] * 4 + [(5_000, 4, True)] * 4
    sent, target, thresholds, _ = run(days)
    assert_on_target(sent, target, from_day=1)
    # what keeping day 3's threshold fixed would have sent on an incident day
    rng = random.Random(99)
    fixed = sum(s >= thresholds[3] for _, _, s in day_of_traffic(rng, 6, 5_000, 4, True))
    assert fixed > 5 * target[6], "a fixed threshold sends several times the volume"


def test_the_volume_holds_when_the_active_customers_double_overnight() -> None:
    # the day's cap follows today's customers once they outnumber yesterday's (capped at
    # yesterday's alone, the day of the jump sent 0.57)
    days = [(5_000, 4, False)] * 3 + [(10_000, 4, False)] * 3
    sent, target, _, _ = run(days)
    assert_on_target(sent, target, from_day=1)


def test_the_volume_holds_through_a_day_that_comes_in_waves() -> None:
    """Customers come mostly in the evening, and not every day: today's target counts the
    customers expected by the hour (so far, plus those still to come by yesterday's hours).
    Counted over customers' own days and decayed, the volume ran 1.06-1.25 here, and with
    calendar days but decayed 1.04-1.17; by the hour it holds within 10%."""
    for days in ([(5_000, 4, False)] * 6, [(round(2_000 * 1.15**d), 4, False) for d in range(8)]):
        sent, target, _, _ = run(days, diurnal=True)
        ratios = off_target(sent, target, from_day=1)
        assert all(0.9 <= r <= 1.1 for r in ratios.values()), ratios


def test_the_volume_comes_back_when_an_incident_ends() -> None:
    # the incident's high scores fill the day's histogram; once they are gone, the short
    # window's floor loosens the threshold again (without it: nothing sent for 2-3 days)
    days = [(5_000, 4, False)] * 4 + [(5_000, 4, True)] * 2 + [(5_000, 4, False)] * 3
    sent, target, _, _ = run(days)
    assert_on_target(sent, target, from_day=1)


def test_a_day_stops_at_its_budget() -> None:
    """Whatever the thresholds say, a day sends at most ``DAY_CAP`` times the target for the
    customers expected that day (yesterday's count without counts by the hour; or today's so
    far, if more); the next day starts afresh."""
    t = AdaptiveThreshold(VolumeTarget(per_1000_active_per_day=10, warm_up_seconds=3_600),
                          start=0.0)  # fmt: skip
    sent: Counter[int] = Counter()
    for i in range(3 * 5_000):  # 5,000 customers a day, each once; every score at the top
        at = i * DAY / 5_000
        t.customer_active(at)
        if t.observe(at, 0.999 if i > 5_000 else (i * 7919 % 10_000) / 10_000):
            t.sent(at)
            sent[int(at // DAY)] += 1
    assert sent[1] == sent[2] == math.ceil(DAY_CAP * 50)


def test_a_record_of_the_previous_version_still_restores() -> None:
    """Version 1 had no daily pace: its thresholds carry over, and the pace starts afresh
    (every volume rule warming up again after an upgrade would send nothing for a day)."""
    _, _, _, t = run([(2_000, 4, False)] * 2)
    old = t.to_record()
    for key in ("day", "due", "day_sent", "due_share", "pace", "expected_active", "day_active",
                "began", "expected_day"):  # fmt: skip
        del old[key]
    old["v"] = 1
    restored = AdaptiveThreshold.from_record(TARGET, old)
    assert restored.warm and restored.threshold == t.threshold and restored.pace == 1.0


def test_policies_that_stop_part_of_what_passes_are_learned() -> None:
    days = [(5_000, 4, False)] * 8
    sent, target, _, t = run(days, suppressed=0.4)
    assert 1.5 < t.correction < 1.85, "1 / 0.6 pass the threshold for each one sent"
    assert_on_target(sent, target, from_day=1)


def test_more_moments_per_customer_do_not_raise_the_volume() -> None:
    days = [(5_000, 3, False)] * 4 + [(5_000, 9, False)] * 5
    sent, target, _, _ = run(days)
    assert_on_target(sent, target, from_day=1)


def test_stream_time_never_goes_back() -> None:
    t = AdaptiveThreshold(VolumeTarget(per_1000_active_per_day=5, warm_up_seconds=0), start=0.0)
    t.observe(1_000.0, 0.5)
    before = t.to_record()
    t.observe(10.0, 0.5)  # a late event counts, with its own (smaller) weight
    assert t.to_record()["last"] == before["last"] == 1_000.0


@settings(max_examples=30, deadline=None)
@given(cut=st.integers(min_value=1, max_value=5_999), seed=st.integers(0, 1_000))
def test_a_restart_anywhere_continues_exactly(cut: int, seed: int) -> None:
    rng = random.Random(seed)
    # (time, score, the customer's first event of the day)
    stream = sorted((rng.random() * 3 * DAY, rng.random(), rng.random() < 0.25)
                    for _ in range(6_000))  # fmt: skip
    target = VolumeTarget(per_1000_active_per_day=50, warm_up_seconds=DAY / 2)

    def feed(t: AdaptiveThreshold, part: list[tuple[float, float, bool]]) -> list[bool]:
        out = []
        for at, score, first in part:
            if first:
                t.customer_active(at)
            hit = t.observe(at, score)
            if hit:
                t.sent(at)
            out.append(hit)
        return out

    whole = AdaptiveThreshold(target, start=0.0)
    expected = feed(whole, stream)
    assert any(expected), "the stream is long enough to act"
    first = AdaptiveThreshold(target, start=0.0)
    got = feed(first, stream[:cut])
    record = json.loads(json.dumps(first.to_record()))  # as it travels
    resumed = AdaptiveThreshold.from_record(target, record)
    got += feed(resumed, stream[cut:])
    assert got == expected
    assert resumed.to_record() == whole.to_record()


def test_a_long_silence_or_an_unreadable_record_does_not_break_the_partition() -> None:
    target = VolumeTarget(per_1000_active_per_day=5, lifetime_seconds=3600, guard_seconds=600,
                          warm_up_seconds=0)  # fmt: skip
    t = AdaptiveThreshold(target, start=0.0)
    for i in range(300):
        t.customer_active(i * 10.0)
        t.observe(i * 10.0, i / 300)
    t.observe(40 * DAY, 0.5)  # 40 days later: exp() of the gap would overflow
    assert math.isfinite(t.threshold) and t.to_record()["origin"] == 40 * DAY
    targets = {"r": target}
    fresh = PartitionVolumes.decode(b"\x00not msgpack of ours", targets, start=5.0)
    assert fresh.encode() == PartitionVolumes(targets, start=5.0).encode()
    # counts by the hour that are not a day's 24: afresh too, not an error at every batch
    saved = PartitionVolumes(targets, start=5.0)
    saved.rules["r"] = t
    record = msgpack.unpackb(saved.encode(), strict_map_key=False)
    record["r"]["active_hours"]["today"] = [1, 2, 3]
    damaged = PartitionVolumes.decode(msgpack.packb(record), targets, start=5.0)
    assert damaged.encode() == PartitionVolumes(targets, start=5.0).encode()
    # a histogram whose bins and counts do not pair up: afresh as well
    record = msgpack.unpackb(saved.encode(), strict_map_key=False)
    record["r"]["scores"][1] = record["r"]["scores"][1][:-8]
    damaged = PartitionVolumes.decode(msgpack.packb(record), targets, start=5.0)
    assert damaged.encode() == PartitionVolumes(targets, start=5.0).encode()


def test_a_partition_record_of_histograms_as_bin_maps_still_restores() -> None:
    """Histograms were stored as {bin: count} before they were packed as bytes: such a
    record restores the same thresholds (an upgrade does not start the volumes afresh)."""
    _, _, _, t = run([(2_000, 4, False)] * 2)
    volumes = PartitionVolumes({"r": TARGET}, start=0.0)
    volumes.rules["r"] = t
    record = msgpack.unpackb(volumes.encode(), strict_map_key=False)
    for k in ("scores", "recent"):
        record["r"][k] = {i: c for i, c in enumerate(t.to_record()[k]) if c}
    restored = PartitionVolumes.decode(msgpack.packb(record), {"r": TARGET}, start=0.0)
    assert restored.rules["r"].to_record() == t.to_record()
    assert restored.encode() == volumes.encode()


def test_a_score_that_appears_late_warms_up_from_its_first_moment() -> None:
    """A contact-risk rule has no moments until the learner's first model serves, days after
    the partition started: it must not act on the first few moments' quantile."""
    target = VolumeTarget(per_1000_active_per_day=50, warm_up_seconds=DAY)
    t = AdaptiveThreshold(target, start=0.0)
    for i in range(5 * 288):  # five days of customers, no moments of this score
        t.customer_active(i * 300.0)
    passed = []
    for i in range(2 * 2880):  # then two days of moments, every 30 s
        at = 5 * DAY + i * 30.0
        t.customer_active(at)
        passed.append((at, t.observe(at, (i * 7919 % 1000) / 1000)))
    assert not any(ok for at, ok in passed if at < 6 * DAY), "a day of moments first"
    assert any(ok for at, ok in passed if at >= 6 * DAY + 600)
    assert t.to_record()["start"] == 5 * DAY


def test_the_target_counts_todays_active_customers_by_yesterdays_hours() -> None:
    """Today's target: the customers active so far today plus those that came after this
    time of day yesterday, so it starts at yesterday's count and ends at today's, however
    fast the traffic grows (a decayed count trailed a growing world by a fifth)."""
    target = VolumeTarget(per_1000_active_per_day=1000, warm_up_seconds=0, every_seconds=60)
    t = AdaptiveThreshold(target, start=0.0)
    for i in range(600):  # day 0: 600 customers, a quarter of them after 18:00
        at = (i * 18 / 450 if i < 450 else 18 + (i - 450) * 6 / 150) * 3600
        t.customer_active(at)
        t.observe(at, 0.5)
    t.observe(DAY + 1.0, 0.5)  # midnight: yesterday's count
    assert t.target_per_day() == pytest.approx(600, rel=0.01)
    for i in range(900):  # day 1: half as many again, all before noon
        at = DAY + 60 + i * 12 * 3600 / 900
        t.customer_active(at)
        t.observe(at, 0.5)
    t.observe(DAY + 12 * 3600, 0.5)
    # and those that came after noon yesterday: 150 by 18:00, 150 after
    assert t.target_per_day() == pytest.approx(900 + 300, rel=0.01)
    t.observe(2 * DAY - 1, 0.5)
    assert t.target_per_day() == pytest.approx(900, rel=0.01), "the day's own count at its end"


def test_a_record_without_counts_by_the_hour_uses_the_decayed_count_until_a_day_is_whole() -> None:
    _, _, _, t = run([(2_000, 4, False)] * 3)
    old = t.to_record()
    for key in ("active_hours", "moment_hours", "hours_from"):
        del old[key]
    old["v"] = 2
    restored = AdaptiveThreshold.from_record(TARGET, json.loads(json.dumps(old)))
    assert restored.target_per_day() == pytest.approx(t.per_day()[1] * 40 / 1000)
    rng = random.Random(3)
    seen: set[int] = set()
    for at, c, score in day_of_traffic(rng, 3, 2_000, 4, False):  # restored late on day 2
        if c not in seen:
            restored.customer_active(at)
            seen.add(c)
        restored.observe(at, score)
    hours = restored.to_record()["active_hours"]
    assert hours["yesterday"] is None, "day 2 was counted from its last minutes only"
    restored.observe(4 * DAY + 1.0, 0.5)  # day 3 was counted whole: tomorrow's shape
    assert sum(restored.to_record()["active_hours"]["yesterday"]) == len(seen) == 2_000
    assert restored.target_per_day() == pytest.approx(2_000 * 40 / 1000, rel=0.01)


def test_after_a_silent_day_the_first_moments_are_not_all_of_the_days() -> None:
    """Yesterday without moments says nothing of how today's will come: the decayed counts
    rank them (by the hour, the first moment of the morning was "all of today's" and any
    score passed)."""
    _, _, _, t = run([(2_000, 4, False)] * 2)
    for i in range(30):  # day 2 silent; day 3 starts with customers, then a low score
        t.customer_active(3 * DAY + i * 10.0)
    assert not t.observe(3 * DAY + 601.0, 0.01)
    assert t.threshold > 0.5


def test_a_late_first_event_of_a_day_already_over_counts_toward_no_day() -> None:
    _, _, _, t = run([(2_000, 4, False)] * 2)
    t.customer_active(2 * DAY + 1.0)  # the stream is past midnight
    before = t.to_record()
    t.customer_active(2 * DAY - 5.0)  # day 1's, arriving after the stream passed midnight
    after = t.to_record()
    assert after["day_active"] == before["day_active"]
    assert after["active_hours"] == before["active_hours"]
