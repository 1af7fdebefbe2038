"""The profile gate and the model/rulebook watchers, without a broker."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from confluent_kafka import TopicPartition

from forewarn.models.friction import FrictionConfig
from forewarn.models.risk import CARD_FILE, MODEL_FILE, default_model_path
from forewarn.pipeline.codecs import RawRecord
from forewarn.streams.scoring.gate import ProfileGate
from forewarn.streams.scoring.membership import AssignmentWatch, GroupProgress
from forewarn.streams.scoring.watch import ModelWatch, RulebookWatch
from forewarn.streams.settings import Settings, masked_properties
from tests.conftest import POLICIES_RULEBOOK


class Partitions:
    """What the gate needs of a consumer: pause, resume and positions, recorded."""

    def __init__(self) -> None:
        self.paused: set[tuple[str, int]] = set()
        self.positions: dict[tuple[str, int], int] = {}

    def pause(self, partitions: list[TopicPartition]) -> None:
        self.paused |= {(tp.topic, tp.partition) for tp in partitions}

    def resume(self, partitions: list[TopicPartition]) -> None:
        self.paused -= {(tp.topic, tp.partition) for tp in partitions}

    def position(self, partitions: list[TopicPartition]) -> list[TopicPartition]:
        return [
            TopicPartition(
                tp.topic, tp.partition, self.positions.get((tp.topic, tp.partition), -1001)
            )
            for tp in partitions
        ]


def ev(p: int, offset: int) -> RawRecord:
    return RawRecord("events", p, offset, b"c", b"{}")


def test_events_wait_until_their_profiles_are_read_to_where_they_stood() -> None:
    clock = [0.0]
    gate = ProfileGate("events", "profiles", max_wait_seconds=60, monotonic=lambda: clock[0])
    c = Partitions()
    gate.on_assign(
        [
            TopicPartition("events", 0),
            TopicPartition("profiles", 0),
            TopicPartition("events", 1),
            TopicPartition("profiles", 1),
            TopicPartition("events", 2),
            TopicPartition("profiles", 2),
        ]
    )
    assert gate.ends_wanted() == [0, 1, 2]
    prof = RawRecord("profiles", 0, 0, b"c", b"{}")
    assert gate.filter(c, [prof, ev(0, 0), ev(1, 0)]) == [prof], "profiles pass, events wait"
    assert c.paused == {("events", 0), ("events", 1)}
    gate.read_to(0, end=1000, committed=-1001)  # 1,000 profiles to read (end found by reading)
    gate.read_to(1, end=500, committed=-1001)
    gate.read_to(2, end=70, committed=70)  # the group read them all before: nothing to wait
    assert gate.ends_wanted() == [] and gate.waiting_for() == [0, 1]
    c.positions[("profiles", 0)] = 999
    assert gate.filter(c, [ev(0, 1), ev(2, 0)]) == [ev(2, 0)]
    c.positions[("profiles", 0)] = 1000
    assert gate.filter(c, [ev(1, 1)]) == [ev(0, 0), ev(0, 1)], "released in order"
    assert c.paused == {("events", 1)} and gate.waiting_for() == [1]
    clock[0] = 61.0  # a profile stream that never pauses: released after the bound
    assert gate.filter(c, []) == [ev(1, 0), ev(1, 1)]
    assert not c.paused and not gate.holding


def test_a_revoked_partition_forgets_what_it_held_and_is_not_left_paused() -> None:
    gate = ProfileGate("events", "profiles")
    c = Partitions()  # like librdkafka, it keeps a pause across unassign and assign
    gate.on_assign([TopicPartition("profiles", 0), TopicPartition("profiles", 1)])
    gate.filter(c, [ev(0, 0), ev(1, 0)])
    assert c.paused == {("events", 0), ("events", 1)}
    gate.on_revoke(c, [TopicPartition("events", 0), TopicPartition("profiles", 0)])
    assert gate.waiting_for() == [1]  # never committed: the next owner reads them again
    assert c.paused == {("events", 1)}, "a partition that comes back is read again"
    gate.on_revoke(c, [TopicPartition("events", 1), TopicPartition("profiles", 1)])
    assert not gate.holding and not c.paused


def _model_dir(tmp_path: Path) -> Path:
    d = tmp_path / "model"
    shutil.copytree(default_model_path(), d)
    return d


def _touch_later(path: Path) -> None:
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


@pytest.mark.parametrize(
    ("name", "spoil", "why"),
    [
        ("not utf-8", lambda p: p.write_bytes(b"version: '\xff'\n"), "1:11: not UTF-8: byte 0xff"),
        ("not yaml", lambda p: p.write_text("rules: [\n"), "not valid YAML"),
        ("invalid", lambda p: p.write_text("version: 1\nrules: 7\n"), "rules: Input should be"),
        ("a directory", lambda p: (p.unlink(), p.mkdir()), "cannot read"),
        ("vanished", lambda p: p.unlink(), "cannot read"),
        ("no permission", lambda p: p.chmod(0), "cannot read"),
        ("too deep", lambda p: p.write_text("a: " + "[" * 5000 + "]" * 5000), "not valid YAML"),
    ],
)  # fmt: skip
def test_a_rulebook_that_cannot_be_used_is_refused_and_the_last_good_one_kept(
    tmp_path: Path, name: str, spoil: object, why: str
) -> None:
    path = tmp_path / "rules.yaml"
    shutil.copy(POLICIES_RULEBOOK, path)
    watch = RulebookWatch(path)
    good = watch.book
    spoil(path)  # type: ignore[operator]
    if path.exists() and path.is_file():
        _touch_later(path)
    if name == "no permission" and os.geteuid() == 0:
        pytest.skip("root reads files whatever their permissions")
    got = watch.check()
    assert got.loaded is None and got.refused is not None and why in got.refused, got.refused
    assert str(path) in got.refused
    assert watch.book is good
    assert watch.check().refused is None, "not retried until it changes again"


def test_a_model_that_cannot_be_used_is_refused_and_the_last_good_one_kept(
    tmp_path: Path,
) -> None:
    d = _model_dir(tmp_path)
    watch = ModelWatch(d, FrictionConfig.default().version)
    first = watch.load_first()
    assert first is not None
    for spoil, why in (
        (lambda: (d / CARD_FILE).write_bytes(b"\xff\xfe"), "card.json"),
        (lambda: (d / MODEL_FILE).write_text("{}"), "model_sha256"),
        ((d / MODEL_FILE).unlink, "no fitted model"),
    ):
        shutil.copytree(default_model_path(), d, dirs_exist_ok=True)  # good again, then:
        spoil()
        got = watch.check()
        assert got.loaded is None and got.refused is not None and why in got.refused
        assert watch.version == first.version


def test_secrets_in_librdkafka_properties_are_never_printed() -> None:
    extra = {
        "sasl.oauthbearer.client.secret": "s3cr3t",
        "sasl.oauthbearer.config": "clientSecret=s3cr3t",
        "ssl.keystore.password": "s3cr3t",
        "ssl.key.pem": "s3cr3t",
        "sasl.oauthbearer.token.endpoint.url": "https://idp/token",
        "client.rack": "eu-west-1a",
    }
    s = Settings(kafka={"extra": extra})
    printed = json.dumps(s.masked()) + repr(s) + str(s)
    assert "s3cr3t" not in printed
    assert masked_properties(extra)["client.rack"] == "eu-west-1a"


def test_a_spare_worker_never_rejoins_and_a_left_behind_one_does() -> None:
    clock = [0.0]
    spare = AssignmentWatch(10, monotonic=lambda: clock[0])
    spare.assigned(set())  # more workers than partitions
    verdicts = []
    for t in range(11, 200, 11):  # the group reads on: its offsets move
        clock[0] = float(t)
        if spare.due():
            verdicts.append(spare.observe(GroupProgress(committed=(t, t), waiting=True)))
    idle = AssignmentWatch(10, monotonic=lambda: clock[0])
    idle.lost()
    for t in range(200, 400, 11):  # nothing to read: nothing waits
        clock[0] = float(t)
        if idle.due():
            verdicts.append(idle.observe(GroupProgress(committed=(5, 5), waiting=False)))
    assert verdicts and set(verdicts) == {"wait"}

    left = AssignmentWatch(10, monotonic=lambda: clock[0])
    left.assigned(set())
    seen = []
    for t in range(400, 460, 1):
        clock[0] = float(t)
        if left.due():
            seen.append(left.observe(GroupProgress(committed=(-1001,), waiting=True)))
    assert seen.count("rejoin") == 1 and seen[-1] == "fail"
    left.assigned({0})  # given partitions: healthy again
    assert not left.due()


def test_an_empty_profiles_partition_holds_nothing_back() -> None:
    gate = ProfileGate("events", "profiles")
    gate.on_assign([TopicPartition("profiles", 0), TopicPartition("events", 0)])
    gate.read_to(0, end=0, committed=-1001)  # never written, never committed
    assert gate.filter(Partitions(), [ev(0, 0)]) == [ev(0, 0)]
