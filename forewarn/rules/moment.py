"""What the rules see of one scored event: the event, the customer's state at that moment,
and the scores before and after it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from forewarn.models.event_fields import EventFields
from forewarn.models.state import CustomerState


@dataclass(slots=True)
class Moment:
    """One scored event, as the rules see it; read-only by convention (built for every event:
    frozen, it cost ~0.8 µs more each)."""

    event: EventFields
    at: float
    state: CustomerState
    derived: tuple[str, ...]
    in_checkout: bool
    friction: float
    prev_friction: float
    #: points each friction signal adds to the score (one row of the batch matrix)
    contributions: Sequence[float] | NDArray[np.float64]
    #: churn risk 0-1 after this event, and before it (None: no churn model loaded)
    churn: float | None = None
    prev_churn: float | None = None
    #: what raises the churn risk most, as (words, log-odds), largest first
    churn_reasons: tuple[tuple[str, float], ...] = ()
    #: the chance of a support contact soon, after this event and before it (None: no
    #: contact-risk model loaded), and what raises it most
    contact: float | None = None
    prev_contact: float | None = None
    contact_reasons: tuple[tuple[str, float], ...] = ()
    #: the contact-risk model version that scored this moment
    contact_version: str | None = None
    #: the partition's stream time when the event was processed (None: the event's own)
    stream_time: float | None = None

    @property
    def now(self) -> float:
        """Stream time at this moment: the partition's, or the event's own without one."""
        return self.at if self.stream_time is None else self.stream_time
