"""What a batch tells the stream learner: its milestones (support contacts, cancellations,
purchases) and a sample of its moments as contact-risk feature rows.

Every moment with trouble just now (an error, or a checkout left, in the last hour) is a row;
of the rest, a share fixed by a hash of customer and event, so a replay samples the same ones.
Each row weighs ``1 / share``: it stands for that many moments of the stream. Support contacts
are what is predicted, never rows.

>>> import numpy as np
>>> from datetime import UTC, datetime
>>> from forewarn.models.contracts import JourneyEvent
>>> from forewarn.models.features import CONTACT_FEATURES
>>> e = JourneyEvent(event_id="e1", customer_id="c1", type="error_page",
...                  occurred_at=datetime(2026, 1, 1, tzinfo=UTC))
>>> x = np.zeros((1, len(CONTACT_FEATURES)))
>>> x[0, CONTACT_FEATURES.index("errors_1h")] = 1  # trouble: always a row, weight 1
>>> rows = feature_rows([e], [3], x, 0.05)
>>> [(r.event_id, r.weight) for r in rows], rows.partitions
([('e1', 1.0)], [3])
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

import numpy as np
from numpy.typing import NDArray

from forewarn.models.contracts import MILESTONE_TYPES, FeatureRow, Milestone
from forewarn.models.event_fields import EventFields
from forewarn.models.features import CONTACT_FEATURE_SET, CONTACT_FEATURES
from forewarn.models.state import stable_fraction

#: the share of moments without trouble a worker samples as feature rows, by default
FEATURE_ROW_SHARE = 0.05

_ERRORS_1H = CONTACT_FEATURES.index("errors_1h")
_LEFT_CHECKOUT = CONTACT_FEATURES.index("checkout_without_purchase_1h")
CONTACT = "support_contact"
T = TypeVar("T")


def milestones(events: Sequence[EventFields], partitions: Sequence[int]) -> Sampled[Milestone]:
    """The batch's milestones, each with its event's partition (``partitions``)."""
    out: Sampled[Milestone] = Sampled()
    for e, p in zip(events, partitions, strict=True):
        if e.type in MILESTONE_TYPES:
            out.records.append(Milestone(event_id=e.event_id, customer_id=e.customer_id,
                                         type=e.type, occurred_at=e.occurred_at))  # fmt: skip
            out.partitions.append(p)
    return out


def feature_rows(
    events: Sequence[EventFields],
    partitions: Sequence[int],
    features: NDArray[np.float64],
    share: float,
) -> Sampled[FeatureRow]:
    """The sampled moments of a batch (``features``: one contact-feature row per event)."""
    out: Sampled[FeatureRow] = Sampled()
    trouble = (features[:, _ERRORS_1H] > 0) | (features[:, _LEFT_CHECKOUT] > 0)
    for i, e in enumerate(events):
        if e.type == CONTACT:
            continue
        kept = 1.0 if trouble[i] else share
        if kept < 1 and stable_fraction(f"row\x1f{e.customer_id}\x1f{e.event_id}") >= kept:
            continue
        out.records.append(FeatureRow(
            event_id=e.event_id, customer_id=e.customer_id, occurred_at=e.occurred_at,
            weight=1 / kept, feature_set=CONTACT_FEATURE_SET, features=features[i].tolist(),
        ))  # fmt: skip
        out.partitions.append(partitions[i])
    return out


@dataclass(slots=True)
class Sampled(Generic[T]):
    """Records for the learner, and the partition of the event each came from: published to
    the same partition, so that each partition of the learner's inputs follows one worker's
    stream time (the learner's watermark is per partition)."""

    records: list[T] = field(default_factory=list)
    partitions: list[int] = field(default_factory=list)

    def extend(self, other: Sampled[T]) -> None:
        self.records += other.records
        self.partitions += other.partitions

    def __iter__(self) -> Iterator[T]:
        return iter(self.records)

    def __len__(self) -> int:
        return len(self.records)
