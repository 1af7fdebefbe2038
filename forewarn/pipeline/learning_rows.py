"""What a batch tells the stream learner: its milestones (support contacts, cancellations,
purchases) and a sample of its moments as contact-risk feature rows.

Every moment with trouble just now (an error, or a checkout left, in the last hour) is a row;
of the rest, a share fixed by a hash of customer and event, so a replay samples the same ones.
Each row weighs ``1 / share``: it stands for that many moments of the stream. Support contacts
are what is predicted, never rows.

>>> import numpy as np
>>> from forewarn.models.features import CONTACT_FEATURES
>>> row = np.zeros(len(CONTACT_FEATURES))
>>> sampled_share(row, 0.05)
0.05
>>> row[CONTACT_FEATURES.index("errors_1h")] = 1
>>> sampled_share(row, 0.05)
1.0
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from numpy.typing import NDArray

from forewarn.models.contracts import MILESTONE_TYPES, FeatureRow, JourneyEvent, Milestone
from forewarn.models.features import CONTACT_FEATURE_SET, CONTACT_FEATURES
from forewarn.models.state import stable_fraction

#: the share of moments without trouble a worker samples as feature rows, by default
FEATURE_ROW_SHARE = 0.05

_ERRORS_1H = CONTACT_FEATURES.index("errors_1h")
_LEFT_CHECKOUT = CONTACT_FEATURES.index("checkout_without_purchase_1h")
CONTACT = "support_contact"


def sampled_share(row: NDArray[np.float64], share: float) -> float:
    """The share of such moments kept as feature rows: all with trouble, ``share`` of the
    rest."""
    return 1.0 if row[_ERRORS_1H] > 0 or row[_LEFT_CHECKOUT] > 0 else share


def milestones(events: Iterable[JourneyEvent]) -> list[Milestone]:
    return [
        Milestone(event_id=e.event_id, customer_id=e.customer_id, type=e.type,
                  occurred_at=e.occurred_at)
        for e in events if e.type in MILESTONE_TYPES
    ]  # fmt: skip


def feature_rows(
    events: Iterable[JourneyEvent], features: NDArray[np.float64], share: float
) -> list[FeatureRow]:
    """The sampled moments of a batch (``features``: one contact-feature row per event)."""
    rows = []
    for e, x in zip(events, features, strict=True):
        if e.type == CONTACT:
            continue
        kept = sampled_share(x, share)
        if kept < 1 and stable_fraction(f"row\x1f{e.customer_id}\x1f{e.event_id}") >= kept:
            continue
        rows.append(FeatureRow(
            event_id=e.event_id, customer_id=e.customer_id, occurred_at=e.occurred_at,
            weight=1 / kept, feature_set=CONTACT_FEATURE_SET, features=x.tolist(),
        ))  # fmt: skip
    return rows
