"""A partition's volume thresholds, one ``AdaptiveThreshold`` per volume-targeted rule, and
how they are stored: one record per partition, read and written once per batch beside the
partition's customers (so an aborted batch leaves them as they were)."""

from __future__ import annotations

from typing import Any

import msgpack

from forewarn.rules.volume import BINS, AdaptiveThreshold, VolumeTarget

#: the changelog and store key of a partition's volume record: it starts with a space, which
#: no customer id can (ids are stripped), so it never names a customer
VOLUME_KEY = " forewarn:volume"


class PartitionVolumes:
    """The volume-targeted rules' thresholds on one partition, read from and written to its
    store once per batch (so an aborted batch leaves them as they were).

    >>> v = PartitionVolumes({"r": VolumeTarget(per_1000_active_per_day=5)}, start=0.0)
    >>> PartitionVolumes.decode(v.encode(), {"r": VolumeTarget(per_1000_active_per_day=5)},
    ...                         start=0.0).encode() == v.encode()
    True
    """

    def __init__(self, targets: dict[str, VolumeTarget], start: float) -> None:
        self.rules = {rule: AdaptiveThreshold(t, start) for rule, t in targets.items()}

    def customer_active(self, at: float) -> None:
        for t in self.rules.values():
            t.customer_active(at)

    def encode(self) -> bytes:
        records = {rule: _sparse(t.to_record()) for rule, t in self.rules.items()}
        data: bytes = msgpack.packb(records)
        return data

    @classmethod
    def decode(
        cls, data: bytes | None, targets: dict[str, VolumeTarget], start: float
    ) -> PartitionVolumes:
        """What ``encode`` wrote; a rule new to the rulebook starts afresh, one whose target
        changed too (its history was gathered for another target), one removed is dropped."""
        volumes = cls(targets, start)
        if data is None:
            return volumes
        try:
            saved = msgpack.unpackb(data, strict_map_key=False)
            for rule, record in saved.items():
                target = targets.get(rule)
                if target is None or record.get("target") != target.model_dump():
                    continue
                volumes.rules[rule] = AdaptiveThreshold.from_record(target, _dense(record))
        except (ValueError, KeyError, TypeError, AttributeError, msgpack.UnpackException):
            # Unreadable (another version's, or damaged): start afresh rather than fail every
            # batch of the partition; the warm-up says so in the metrics.
            return cls(targets, start)
        return volumes


def _sparse(record: dict[str, Any]) -> dict[str, Any]:
    """Histograms as {bin: count} (most bins of a score are empty)."""
    out = dict(record)
    for k in ("scores", "recent"):
        out[k] = {i: c for i, c in enumerate(record[k]) if c}
    return out


def _dense(record: dict[str, Any]) -> dict[str, Any]:
    out = dict(record)
    for k in ("scores", "recent"):
        hist = [0.0] * BINS
        for i, c in record[k].items():
            hist[int(i)] = float(c)
        out[k] = hist
    return out
