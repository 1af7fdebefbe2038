"""The peers Forewarn's worker is measured against in the same run (issue 14): a Quix Streams
application and a faust-streaming agent, each doing the minimal equivalent job on the bench's
journey-events topic:

* decode each record's JSON;
* keep per-customer state (Quix: RocksDB with its changelog topic, exactly-once; faust: a
  table with its changelog topic);
* fold a decayed score (half-life one hour of event time);
* emit about 1% of events (a stable hash of the event id) to an output topic.

Each peer runs as its own process and prints one JSON line: its events/s from its first record
to its n-th. Quix Streams pins confluent-kafka, pydantic and pydantic-settings below the
versions Forewarn pins, so it cannot live in Forewarn's environment: ``peers_python()``
builds a separate virtual environment (``bench/.peers``, from ``bench/peers-requirements.txt``)
on first use. faust-streaming is already one of Forewarn's dependencies.

Run one peer alone: ``python bench/peers.py quix --bootstrap HOST:PORT --topic T --events N``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
import uuid
import zlib
from datetime import datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
PEERS_ENV = HERE / ".peers"
REQUIREMENTS = HERE / "peers-requirements.txt"
HALF_LIFE_S = 3600.0
#: as forewarn.streams.settings.CONSUMER_FETCH_WAIT_MS (this file runs where Quix Streams is
#: installed, without Forewarn; a test holds the two together)
FETCH_WAIT_MS = 100
#: weight of each event in the decayed score: trouble counts more than browsing
TROUBLE = {"payment_failed", "checkout_error", "error_page", "app_crash", "login_failed"}


def emitted(event_id: str) -> bool:
    """About 1% of events, the same ones in every peer."""
    return zlib.crc32(event_id.encode()) % 100 == 0


def folded(state: dict[str, float] | None, event: dict[str, Any]) -> dict[str, float]:
    """The customer's decayed score after ``event`` (the peers' whole "model")."""
    at = _epoch(event.get("occurred_at", ""))
    weight = 5.0 if event.get("type") in TROUBLE else 1.0
    if state is None:
        return {"score": weight, "at": at}
    decay = math.exp(-math.log(2) * max(0.0, at - state["at"]) / HALF_LIFE_S)
    return {"score": state["score"] * decay + weight, "at": max(at, state["at"])}


def _epoch(iso: str) -> float:
    try:
        return datetime.fromisoformat(iso).timestamp()
    except ValueError:
        return 0.0


class Pace:
    """Counts records; reports events/s from the first to the n-th, then ends the process."""

    def __init__(self, n: int) -> None:
        self.n, self.seen, self.first = n, 0, 0.0

    def tick(self) -> None:
        self.seen += 1
        if self.seen == 1:
            self.first = time.perf_counter()
        elif self.seen >= self.n:
            rate = self.n / (time.perf_counter() - self.first)
            print(json.dumps({"events_per_s": round(rate)}), flush=True)
            os._exit(0)  # both frameworks take seconds to shut down: not part of the job


def run_quix(bootstrap: str, topic: str, n: int) -> None:
    from quixstreams import Application  # type: ignore[import-not-found]

    tag = uuid.uuid4().hex[:8]
    app = Application(
        broker_address=bootstrap,
        consumer_group=f"peer-quix-{tag}",
        auto_offset_reset="earliest",
        processing_guarantee="exactly-once",
        state_dir=tempfile.mkdtemp(prefix="peer-quix-"),
        loglevel="WARNING",
        # the fetch wait Forewarn's consumers use (settings.CONSUMER_FETCH_WAIT_MS): on the
        # embedded broker, which holds every fetch this long, both read alike
        consumer_extra_config={"fetch.wait.max.ms": FETCH_WAIT_MS},
    )
    pace = Pace(n)
    source = app.topic(topic, value_deserializer="json", key_deserializer="str")
    # The embedded broker does not report retention.ms, which Quix reads to size the
    # changelog topic; on a real Kafka this changes nothing.
    source.broker_config.extra_config.setdefault("retention.ms", "-1")
    out = app.topic(f"{topic}-peer-quix-out", value_serializer="json")

    def score(value: dict[str, Any], state: Any) -> dict[str, Any] | None:
        new = folded(state.get("s"), value)
        state.set("s", new)
        pace.tick()
        return (
            {"id": value.get("event_id"), "score": new["score"]}
            if emitted(str(value.get("event_id")))
            else None
        )

    sdf = app.dataframe(source).apply(score, stateful=True).filter(lambda v: v is not None)
    sdf.to_topic(out)
    app.run()


def run_faust(bootstrap: str, topic: str, n: int, partitions: int) -> None:
    import faust

    tag = uuid.uuid4().hex[:8]
    app = faust.App(
        f"peer-faust-{tag}",
        broker=f"kafka://{bootstrap}",
        store="memory://",
        topic_partitions=partitions,
        web_enabled=False,
        datadir=tempfile.mkdtemp(prefix="peer-faust-"),
        consumer_auto_offset_reset="earliest",
    )
    pace = Pace(n)
    source = app.topic(topic, key_type=bytes, value_type=bytes, value_serializer="raw",
                       key_serializer="raw")  # fmt: skip
    out = app.topic(f"{topic}-peer-faust-out", value_serializer="json")
    table = app.Table("scores", default=None, partitions=partitions)  # JSON values

    @app.agent(source)
    async def score(stream: Any) -> None:
        async for key, value in stream.items():
            event = json.loads(value)
            new = folded(table.get(key), event)
            table[key] = new
            pace.tick()
            if emitted(str(event.get("event_id"))):
                await out.send(key=key, value={"id": event.get("event_id"), "score": new["score"]})

    sys.argv = [sys.argv[0], "worker", "--loglevel", "warn"]
    app.main()


def peers_python() -> Path:
    """The peers' interpreter, building their environment on first use."""
    python = PEERS_ENV / "bin" / "python"
    stamp = PEERS_ENV / ".installed"
    if not stamp.exists() or stamp.read_text() != REQUIREMENTS.read_text():
        subprocess.run([sys.executable, "-m", "venv", str(PEERS_ENV)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", "-r", str(REQUIREMENTS)],
                       check=True)  # fmt: skip
        stamp.write_text(REQUIREMENTS.read_text())
    return python


def measure_peer(
    kind: str, python: Path | str, bootstrap: str, topic: str, n: int, partitions: int,
    timeout: float = 600.0,
) -> float | None:  # fmt: skip
    """A peer's events/s over the first ``n`` records of ``topic`` (None: it failed; why is
    printed)."""
    cmd = [str(python), str(Path(__file__).resolve()), kind, "--bootstrap", bootstrap,
           "--topic", topic, "--events", str(n), "--partitions", str(partitions)]  # fmt: skip
    try:
        done = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        print(f"peer {kind}: no result within {timeout:.0f} s", flush=True)
        return None
    # faust routes print() through its logging: the line may carry a log prefix
    found = re.search(r'\{"events_per_s": \d+\}', done.stdout + done.stderr)
    if found:
        return float(json.loads(found.group())["events_per_s"])
    print(f"peer {kind} failed (exit {done.returncode}):\n{done.stderr[-2000:]}", flush=True)
    return None


def measure_peers(
    bootstrap: str, topic: str, n: int, partitions: int, skip: bool = False
) -> dict[str, float | None]:
    """Both peers' events/s on ``topic`` (None where a peer could not run; why is printed)."""
    if skip:
        return {"quixstreams": None, "faust": None}
    try:
        quix: Path | None = peers_python()
    except (OSError, subprocess.CalledProcessError) as e:
        print(f"peer quixstreams: cannot build its environment ({e})", flush=True)
        quix = None
    return {
        "quixstreams": None if quix is None else measure_peer("quix", quix, bootstrap, topic,
                                                              n, partitions),
        "faust": measure_peer("faust", sys.executable, bootstrap, topic, n, partitions),
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("kind", choices=["quix", "faust"])
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--topic", required=True)
    ap.add_argument("--events", type=int, required=True)
    ap.add_argument("--partitions", type=int, default=2)
    args = ap.parse_args()
    if args.kind == "quix":
        run_quix(args.bootstrap, args.topic, args.events)
    else:
        run_faust(args.bootstrap, args.topic, args.events, args.partitions)


if __name__ == "__main__":
    main()
