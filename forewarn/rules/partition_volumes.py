"""A partition's volume thresholds, one ``AdaptiveThreshold`` per volume-targeted rule, and
how they are stored: one record per partition, read and written once per batch beside the
partition's customers (so an aborted batch leaves them as they were)."""

from __future__ import annotations

from typing import Any

import msgpack
import numpy as np

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

    def targets(self) -> dict[str, VolumeTarget]:
        return {rule: t.target for rule, t in self.rules.items()}

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


class WrittenVolumes:
    """Each partition's volume record as last written, with the thresholds that wrote it:
    while the store still holds those bytes, the next batch goes on from them instead of
    decoding them again (0.15-0.35 ms per partition and batch).

    >>> targets = {"r": VolumeTarget(per_1000_active_per_day=5)}
    >>> written, v = WrittenVolumes(), PartitionVolumes(targets, start=0.0)
    >>> written.wrote(0, v.encode(), v)
    >>> written.take(0, v.encode(), targets, start=0.0) is v    # the same bytes: the same
    True
    >>> written.take(0, v.encode(), targets, start=0.0) is v    # taken out while in use
    False
    """

    def __init__(self) -> None:
        self._by_partition: dict[int, tuple[bytes, PartitionVolumes]] = {}

    def wrote(self, partition: int, data: bytes, volumes: PartitionVolumes) -> None:
        self._by_partition[partition] = (data, volumes)

    def take(
        self, partition: int, saved: bytes | None, targets: dict[str, VolumeTarget], start: float
    ) -> PartitionVolumes:
        """The thresholds ``saved`` holds. The record decodes to exactly the thresholds that
        wrote it; an aborted batch, a restore or another worker's batch leaves other bytes,
        which are decoded. Taken out while in use: a batch that fails midway leaves the
        thresholds half-changed."""
        written, mine = self._by_partition.pop(partition, (None, None))
        if mine is not None and saved == written and mine.targets() == targets:
            return mine
        return PartitionVolumes.decode(saved, targets, start)


def _sparse(record: dict[str, Any]) -> dict[str, Any]:
    """Histograms as [bins, counts]: the bins that hold anything (uint16) and their counts
    (float64), as bytes. Most bins of a friction score are empty; packed by numpy, a
    partition's record encodes in a tenth of the time a {bin: count} map took."""
    out = dict(record)
    for k in ("scores", "recent"):
        hist = np.asarray(record[k], dtype=np.float64)
        bins = np.flatnonzero(hist)
        out[k] = [bins.astype(np.uint16).tobytes(), hist[bins].tobytes()]
    return out


def _dense(record: dict[str, Any]) -> dict[str, Any]:
    out = dict(record)
    for k in ("scores", "recent"):
        hist = np.zeros(BINS)
        packed = record[k]
        if isinstance(packed, dict):  # as written before the packing: {bin: count}
            for i, c in packed.items():
                hist[int(i)] = float(c)
        else:
            bins = np.frombuffer(packed[0], dtype=np.uint16)
            counts = np.frombuffer(packed[1], dtype=np.float64)
            if len(bins) != len(counts) or (len(bins) and int(bins.max()) >= BINS):
                raise ValueError("a histogram's bins and counts do not match")
            hist[bins] = counts
        out[k] = hist.tolist()
    return out
