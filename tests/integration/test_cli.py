"""The ``forewarn`` command line as a user runs it, against the real broker."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from confluent_kafka import Producer

from forewarn.models.contracts import Consent, CustomerProfile
from forewarn.pipeline.codecs import encode
from forewarn.streams.settings import Settings, TopicNames, kafka_config
from tests.conftest import event, score_process, settings_env, sigterm_once_committed

pytestmark = pytest.mark.integration


def _env(s: Settings) -> dict[str, str]:
    return settings_env(s, FOREWARN_KAFKA__SASL_PASSWORD="hunter2-never-logged")


def _forewarn(
    *args: str, env: dict[str, str], timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "forewarn.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_score_stops_cleanly_on_sigterm_after_committing(
    make_settings: Callable[..., Settings],
) -> None:
    s = make_settings(partitions=1)
    p = Producer(kafka_config(s, "producer"))
    now = datetime.now(UTC) - timedelta(minutes=1)
    for i in range(50):
        e = event(f"c{i % 5}", "page_view", now + timedelta(seconds=i), n=i)
        p.produce(s.topics.journey_events, key=e.customer_id.encode(), value=encode(e))
    p.flush(10)
    proc = score_process(_env(s))
    out = sigterm_once_committed(proc, s, 50, timeout=60)
    assert proc.returncode == 0, out
    assert "received SIGTERM" in out
    assert "stopped after" in out
    assert "hunter2" not in out, "secrets never reach the log"
    assert "**********" in out, "masked settings are logged at start"


def test_topics_create_is_idempotent_and_verify_reports(
    make_settings: Callable[..., Settings],
) -> None:
    s = make_settings(partitions=3)
    env = _env(s)
    env["FOREWARN_TOPICS__ACTIONS"] = s.topics.actions + "-new"
    created = _forewarn("topics", "create", env=env)
    assert created.returncode == 0, created.stderr
    lines = {ln.split()[0]: ln for ln in created.stdout.splitlines()[1:]}
    assert lines[s.topics.actions + "-new"].endswith("created")
    assert lines[s.topics.journey_events].endswith("exists")
    assert " compact " in lines[s.topics.customer_profiles]
    again = _forewarn("topics", "verify", env=env)
    assert again.returncode == 0
    assert "created" not in again.stdout

    env["FOREWARN_TOPICS__PARTITIONS"] = "5"  # the existing pair has 3: not co-partitioned
    wrong = _forewarn("topics", "verify", env=env)
    assert wrong.returncode == 1
    assert "wrong partitions (3, want 5)" in wrong.stdout


def test_tail_pretty_prints_actions_and_decisions(
    make_settings: Callable[..., Settings], start_worker: Callable[[Settings], object]
) -> None:
    s = make_settings(partitions=1)
    p = Producer(kafka_config(s, "producer"))
    profile = CustomerProfile(customer_id="tailed", consent=Consent(email=True))
    p.produce(s.topics.customer_profiles, key=b"tailed", value=encode(profile))
    e = event("tailed", "delivery_delayed", datetime.now(UTC), n=1, order_id="ord-9")
    p.produce(s.topics.journey_events, key=b"tailed", value=encode(e))
    p.flush(10)
    start_worker(s)
    env = _env(s)
    out = _forewarn(
        "tail", "actions", "--from-beginning", "--max", "1", "--timeout", "30", env=env
    ).stdout
    assert "tailed  delivery_apology -> email" in out
    assert "why: triggered by delivery delayed" in out
    dec = _forewarn(
        "tail", "decisions", "--from-beginning", "--max", "1", "--timeout", "30", env=env
    ).stdout
    assert "delivery_apology  emitted via email" in dec


def test_tail_shows_the_records_already_in_the_topic_within_its_timeout(
    make_settings: Callable[..., Settings],
) -> None:
    """No group to join: the partitions are assigned, so a short idle timeout is enough."""
    s = make_settings(partitions=3)
    p = Producer(kafka_config(s, "producer"))
    for i in range(12):
        p.produce(s.topics.actions, key=f"c{i}".encode(), value=f'{{"n": {i}}}'.encode())
        p.flush(10)  # one record a batch: the embedded broker's end offset counts batches
    env = _env(s)
    shown = _forewarn("tail", "actions", "--from-beginning", "--json", "--timeout", "2", env=env)
    assert shown.returncode == 0, shown.stderr
    assert sorted(shown.stdout.splitlines()) == sorted(f'{{"n": {i}}}' for i in range(12))
    new_only = _forewarn("tail", "actions", "--json", "--timeout", "1", env=env)
    assert new_only.returncode == 0 and new_only.stdout == "", "without --from-beginning: new ones"


def test_tail_and_simulate_name_a_missing_topic(make_settings: Callable[..., Settings]) -> None:
    s = make_settings(partitions=1)
    env = {**_env(s), "FOREWARN_TOPICS__DECISIONS": "no-such-topic",
           "FOREWARN_TOPICS__JOURNEY_EVENTS": "no-such-topic"}  # fmt: skip
    for args in (["tail", "decisions", "--timeout", "1"], ["simulate", "--duration", "1"]):
        r = _forewarn(*args, env=env)
        assert r.returncode == 1, r.stderr
        assert r.stderr.strip() == (
            f"forewarn: topic no-such-topic does not exist at {s.bootstrap_servers}; create "
            "Forewarn's topics with: forewarn topics create (or set FOREWARN_TOPICS__*)"
        )


def test_simulate_exits_1_saying_what_kafka_did_not_take() -> None:
    """The broker stops while simulate publishes: what it produced afterwards is never
    delivered (3 s to deliver), and it says how much, instead of "published"."""
    from forewarn.streams.broker import EmbeddedBroker
    from forewarn.streams.topics import create_topics

    with EmbeddedBroker() as broker:
        s = Settings(bootstrap_servers=broker.bootstrap, topics=TopicNames(partitions=1))
        assert all(r.ok for r in create_topics(s))
        env = {**_env(s), "FOREWARN_KAFKA__EXTRA": '{"message.timeout.ms": "3000"}'}
        proc = subprocess.Popen(
            [sys.executable, "-m", "forewarn.cli", "simulate", "--duration", "6",
             "--customers", "50", "--rate", "100"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        try:
            assert proc.stdout is not None
            first = proc.stdout.readline()  # "published N events", a second in
            assert first.startswith("published "), first
            assert broker.process is not None
            broker.process.kill()  # at once: stopping gracefully, it serves open connections
            broker.process.wait(10)
            out, err = proc.communicate(timeout=90)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
    assert proc.returncode == 1, out + err
    last = err.strip().splitlines()[-1]
    assert last.startswith("forewarn: ") and " records were not delivered to Kafka at " in last
    assert broker.bootstrap in last
    assert "profiles and" not in out, "no claim that it published them"
    assert "Traceback" not in err


def test_demo_runs_end_to_end_and_stops_what_it_started(tmp_path: Path) -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "forewarn.cli",
            "demo",
            "--duration",
            "8",
            "--rate",
            "500",
            "--customers",
            "500",
            "--bad-rate",
            "0.01",
        ],
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    out = proc.stdout
    assert proc.returncode == 0, out + proc.stderr
    for heading in (
        "Outreach actions:",
        "Three example actions",
        "Dead letters by reason:",
        "Proactive coverage:",
        "scoring worker stopped on SIGTERM (exit code 0)",
        "What outreach changed (the feedback plane",
    ):
        assert heading in out
    assert "why: triggered by" in out
    feedback_pid = int(out.split("feedback plane started (pid ")[1].split(")")[0])
    assert _pid_gone(feedback_pid)
    broker_port = out.split("broker on 127.0.0.1:")[1].split()[0]
    with pytest.raises(OSError):  # the broker it started is gone
        import socket

        socket.create_connection(("127.0.0.1", int(broker_port)), timeout=1).close()


def _port_closed(port: int) -> bool:
    import socket

    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return True
    return False


def _pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_demo_on_ctrl_c_stops_everything_and_exits_0() -> None:
    # A terminal's Ctrl-C sends SIGINT to the whole foreground process group.
    proc = subprocess.Popen(
        [sys.executable, "-m", "forewarn.cli", "demo", "--duration", "60"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip
    assert proc.stdout is not None
    seen = []
    try:
        for line in proc.stdout:
            seen.append(line)
            if "simulating" in line:
                break
        time.sleep(3)
        os.killpg(proc.pid, signal.SIGINT)
        out = "".join(seen) + proc.stdout.read()
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, out
    assert "interrupted: stopping everything the demo started" in out
    broker_port = int(out.split("broker on 127.0.0.1:")[1].split()[0])
    worker_pid = int(out.split("scoring worker started (pid ")[1].split(")")[0])
    feedback_pid = int(out.split("feedback plane started (pid ")[1].split(")")[0])
    assert _port_closed(broker_port)
    assert _pid_gone(worker_pid)
    assert _pid_gone(feedback_pid)


def test_broker_command_runs_in_the_foreground_until_interrupted() -> None:
    from forewarn.streams.broker import free_port, wait_for_port

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "forewarn.cli", "broker", "--port",
                             str(port)], stdout=subprocess.PIPE, text=True,
                            start_new_session=True)  # fmt: skip
    try:
        wait_for_port(port, timeout=15)
        from confluent_kafka.admin import AdminClient

        md = AdminClient({"bootstrap.servers": f"127.0.0.1:{port}"}).list_topics(timeout=10)
        assert md.brokers, "a Kafka client can talk to it"
        os.killpg(proc.pid, signal.SIGINT)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert f"export FOREWARN_BOOTSTRAP_SERVERS=127.0.0.1:{port}" in out
    assert proc.returncode == 0
    assert _port_closed(port)
