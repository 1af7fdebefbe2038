"""Restoring state from the changelog on the real broker, the partitions read together: an
empty partition, a fresh store and a store whose checkpoint lies beyond its changelog's end
(a topic recreated) in one restore."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from confluent_kafka import Consumer, Producer

from forewarn.models.state import CustomerState
from forewarn.models.state_codec import encode_state
from forewarn.pipeline.stores import MemoryStore
from forewarn.streams.scoring.outputs import STREAM_TIME_HEADER
from forewarn.streams.scoring.restore import restore_partitions
from forewarn.streams.scoring.stores import Store
from forewarn.streams.settings import Settings, kafka_config

pytestmark = pytest.mark.integration


class CountingConsumer(Consumer):
    """The real restore consumer, counting its assignments."""

    def __init__(self, conf: dict[str, Any]) -> None:
        super().__init__(conf)
        self.assignments: list[list[int]] = []

    def assign(self, partitions: list[Any]) -> None:
        self.assignments.append(sorted(tp.partition for tp in partitions))
        super().assign(partitions)


def state(cid: str, n: int) -> CustomerState:
    return CustomerState(cid, events_seen=n, first_seen=1.0, last_seen=float(n))


def test_the_partitions_restore_together_and_a_recreated_changelog_from_its_start(
    make_settings: Callable[..., Settings],
) -> None:
    s = make_settings(partitions=3)
    p = Producer(kafka_config(s, "producer"))
    # partition 0: ann written twice, then bob; partition 1 empty; partition 2: cat
    for part, cid, n, at in ((0, "ann", 1, 10.0), (0, "ann", 2, 20.0), (0, "bob", 1, 15.0),
                             (2, "cat", 3, 30.0)):  # fmt: skip
        p.produce(s.topics.state, key=cid.encode(), value=encode_state(state(cid, n)),
                  partition=part, headers=[(STREAM_TIME_HEADER, repr(at).encode())])  # fmt: skip
    assert p.flush(10) == 0
    stores: dict[int, Store] = {0: MemoryStore(), 1: MemoryStore(), 2: MemoryStore()}
    # partition 2's store was checkpointed at offset 50 of a changelog that is gone
    stale = stores[2]
    stale.put(state("old", 9))
    stale.commit({}, 50)
    consumer = CountingConsumer(kafka_config(s, "restore"))
    try:
        results = restore_partitions(consumer, s.topics.state, stores, stall_seconds=30)
    finally:
        consumer.close()
    assert results is not None
    by_partition = {r.partition: r for r in results}
    assert by_partition[0].records == 3 and by_partition[0].customers == 2
    assert by_partition[1].records == 0
    assert by_partition[2].from_checkpoint is None, "restored from the start, not offset 50"
    assert stores[0].get("ann") == state("ann", 2) and stores[0].get("bob") == state("bob", 1)
    assert stores[2].get("cat") == state("cat", 3) and stores[2].get("old") is None
    assert stores[0].stream_time == 20.0 and stores[2].stream_time == 30.0
    assert [st.checkpoint for st in stores.values()] == [3, 0, 1]
    # one assignment for both partitions with records (the empty one needs no read), then
    # partition 2 again from its start
    assert consumer.assignments == [[0, 2], [2]]
    assert len({r.seconds for r in results}) == 1, "one restore, one time"
