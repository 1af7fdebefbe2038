"""Fault drills on the broker: restarted empty, frozen for 90 s (issue 9). Each drill has a
broker of its own, since it stops or freezes it. Failure modes and what an operator does:
docs/operations.md.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from forewarn.streams.broker import EmbeddedBroker
from forewarn.streams.simulate import publish_backlog
from forewarn.streams.topics import create_topics
from tests.conftest import committed_events, read_all
from tests.drills.conftest import WorkerProcess, fresh_settings, good_stream, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.drill]


def test_the_broker_restarted_empty_is_resumed_from(
    own_broker: EmbeddedBroker, workers: Callable[..., WorkerProcess], tmp_path: Path
) -> None:
    s = fresh_settings(own_broker)
    profiles, first = good_stream(40, seed=93)
    publish_backlog(s, profiles, first)
    w = workers(s, FOREWARN_REJOIN_AFTER_SECONDS="5")
    wait_until("the first stream committed", lambda: committed_events(s) == len(first), 90, w)
    own_broker.stop()
    time.sleep(8)  # the worker loses the broker, its group and its partitions
    own_broker.start()
    time.sleep(12)  # the worker rejoins before the topics exist again (that used to stick)
    assert all(r.ok for r in create_topics(s))
    profiles2, second = good_stream(30, seed=94, hours=2)
    publish_backlog(s, profiles2, second)
    # documented bound (docs/operations.md): resumes within two minutes of the topics
    wait_until("the new stream committed", lambda: committed_events(s) == len(second), 150, w)
    assert w.get("/healthz")[0] == 200
    assert w.get("/readyz")[0] == 200
    # every new event was scored: none skipped as already applied by a stale state
    wait_until(
        "the metrics caught up",
        lambda: w.metric("forewarn_events_total") == len(first) + len(second),
        30,
        w,
    )
    assert w.metric("forewarn_replayed_records_total") == 0
    assert "starts afresh from the changelog" in w.output() or "rejoining" in w.output()


@pytest.mark.timeout(600)  # a 90 s stall, then a rejoin: more than the suite's 300 s on a slow CI
def test_a_90_second_broker_stall_is_waited_out_without_exit_loss_or_duplicates(
    own_broker: EmbeddedBroker, workers: Callable[..., WorkerProcess], tmp_path: Path
) -> None:
    # ~18k events at 50 a transaction: the stall meets the worker mid-stream (it needs well
    # under a second to commit its first batch and seconds for the rest), yet the drill
    # stays within its time on a slow machine
    profiles, evs = good_stream(2_000, seed=95, hours=24)
    reference = fresh_settings(own_broker)
    reference = reference.model_copy(
        update={
            "topics": reference.topics.suffixed("ref"),
            "group_id": "drill-ref",
            "instance_id": "ref",
        }
    )
    assert all(r.ok for r in create_topics(reference))
    publish_backlog(reference, profiles, evs)
    ref = workers(reference)
    wait_until("the reference run", lambda: committed_events(reference) == len(evs), 120, ref)
    expected = {
        json.loads(v or b"{}")["action_id"]
        for _, v in read_all(reference, reference.topics.actions)
    }
    assert ref.stop() == 0

    s = fresh_settings(own_broker)
    publish_backlog(s, profiles, evs)
    w = workers(s, FOREWARN_BATCH_SIZE="50")
    wait_until("scoring under way", lambda: committed_events(s) > 0, 90, w)
    assert committed_events(s) < len(evs) // 2, "the stall must meet the worker mid-stream"
    assert own_broker.process is not None
    os.kill(own_broker.process.pid, signal.SIGSTOP)
    try:
        for _ in range(18):  # 90 s, checking that the worker stays up and says it is alive
            time.sleep(5)
            assert w.proc.poll() is None, w.output()
            assert w.get("/healthz")[0] == 200, "waiting for the broker is not a hang"
    finally:
        os.kill(own_broker.process.pid, signal.SIGCONT)
    wait_until("the whole stream", lambda: committed_events(s) == len(evs), 180, w)
    actions = Counter(json.loads(v or b"{}")["action_id"] for _, v in read_all(s, s.topics.actions))
    assert set(actions) == expected, "no action lost, none invented"
    assert max(actions.values()) == 1, "no action twice"
    # the group's session ran out meanwhile. Whether a batch's calls were asked again or its
    # transaction aborted depends on which call the stall froze (librdkafka may simply hold
    # a call through it): the premise checked before the stall is that it met the worker
    # mid-stream
    assert w.metric("forewarn_rebalances_total", kind="lost") >= 1
    assert w.stop() == 0
